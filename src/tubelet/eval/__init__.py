"""Evaluation protocols as pure functions over scores and loaders: multi-view testing (``multiview``),
kNN classification (``knn``). The engine drives them (``engine/evaluate.py``)."""

from tubelet.eval.multiview import confusion_matrix, predict_views, topk_accuracy, topk_correct, view_scores

__all__ = ["confusion_matrix", "predict_views", "topk_accuracy", "topk_correct", "view_scores"]
