"""Evaluation protocols: multi-view testing (``multiview``)."""

from tubelet.eval.multiview import confusion_matrix, evaluate, topk_accuracy, view_scores

__all__ = ["confusion_matrix", "evaluate", "topk_accuracy", "view_scores"]
