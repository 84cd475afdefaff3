"""Weighted k-nearest-neighbour classification on frozen features: the monitor of self-supervised
pre-training (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
arXiv 1805.01978, Sec. 3.4; used by the rho-SSL code as its kNN monitor).

Features are the backbone's pooled pre-logits vectors, L2-normalised. A test clip votes with its k
most similar memory clips (cosine similarity s), each weighing ``exp(s / T)`` for its class; the
prediction is the class with the largest sum. Defaults k = 20, T = 0.07.

``KNNMonitor`` is a Lightning callback that runs it every ``every_n_steps`` training steps (and at the
end of training) on a train memory set and a validation set, logging ``val/knn_top1``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


def knn_predict(test: torch.Tensor, memory: torch.Tensor, memory_labels: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """Class scores ``(N, num_classes)`` for normalised ``test (N, D)`` against ``memory (M, D)``."""
    k = min(k, memory.shape[0])
    out = []
    for t in test.split(chunk):
        sim = t @ memory.t()  # (n, M) cosine similarities
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()
        votes = torch.zeros(t.shape[0], num_classes, dtype=w.dtype, device=w.device)
        votes.scatter_add_(1, memory_labels[idx], w)
        out.append(votes)
    return torch.cat(out)


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 32,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pooled features and labels of a dataset of single clips (views ``(V, C, T, H, W)``
    are averaged). The backbone runs in eval mode; its mode is restored afterwards."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            video = batch["video"].to(device) if device is not None else batch["video"]
            views = video.shape[1] if video.ndim == 6 else 1
            x = video.flatten(0, 1) if video.ndim == 6 else video
            f = backbone.forward_head(backbone.forward_features(x), pre_logits=True).float()
            f = F.normalize(f.view(-1, views, f.shape[-1]).mean(1), dim=1)
            feats.append(f.cpu())
            labels.append(batch["label"].view(-1).long())
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(backbone: nn.Module, memory: Dataset, test: Dataset, num_classes: int, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 32, device: torch.device | None = None) -> float:
    """Top-1 accuracy of the weighted kNN classifier (``memory`` = labelled train clips)."""
    mf, ml = extract_features(backbone, memory, batch_size, device)
    tf, tl = extract_features(backbone, test, batch_size, device)
    pred = knn_predict(tf, mf, ml, num_classes, k, temperature).argmax(1)
    return float((pred == tl).float().mean())


def knn_datasets(data_cfg: Any, max_train: int | None = None, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Deterministic single-clip views (the val-split pipeline) of the train videos (memory, at most
    ``max_train``) and of the validation videos."""
    from tubelet.data.builder import build_eval_views

    memory = build_eval_views(data_cfg, "train", seed=seed)
    val = build_eval_views(data_cfg, "val", seed=seed)
    if max_train is not None and len(memory) > max_train:
        memory = Subset(memory, range(max_train))
    return memory, val


class KNNMonitor(Callback):
    """Logs ``val/knn_top1`` of ``pl_module.method.backbone`` every ``every_n_steps`` steps (0: only at
    the end). Draws nothing from the global RNGs, so training continues exactly as without it."""

    def __init__(self, memory: Dataset, test: Dataset, num_classes: int, every_n_steps: int = 0, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 32) -> None:
        self.memory, self.test, self.num_classes = memory, test, num_classes
        self.every_n_steps, self.k, self.temperature, self.batch_size = every_n_steps, k, temperature, batch_size
        self.history: list[tuple[int, float]] = []

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        with torch.random.fork_rng(devices=[]):
            acc = knn_accuracy(pl_module.method.backbone, self.memory, self.test, self.num_classes, self.k,
                               self.temperature, self.batch_size, pl_module.device)
        self.history.append((trainer.global_step, acc))
        return acc

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step < trainer.max_steps:
            pl_module.log("val/knn_top1", self._run(trainer, pl_module), batch_size=1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        acc = self._run(trainer, pl_module)
        trainer.callback_metrics["val/knn_top1"] = torch.tensor(acc)
        for logger in trainer.loggers:
            logger.log_metrics({"val/knn_top1": acc}, step=trainer.global_step)


def monitor_from_recipe(recipe: Any) -> KNNMonitor | None:
    """The kNN monitor a recipe asks for (``method.knn_every_n_steps`` not None), else None."""
    every = getattr(recipe.method, "knn_every_n_steps", None)
    if every is None:
        return None
    m = recipe.method
    memory, test = knn_datasets(recipe.data, m.knn_max_train, recipe.seed)
    names = getattr(test, "class_names", None)
    num_classes = len(names) if names else recipe.model.num_classes
    from tubelet.data.builder import check_dataset_labels

    for ds in (memory, test):  # a vote for a class past the table would raise at the first kNN pass
        check_dataset_labels(ds, num_classes, f"the kNN monitor's {num_classes} classes"
                             if names else f"model.num_classes={num_classes}, the kNN monitor's classes")
    return KNNMonitor(memory, test, num_classes, int(every), m.knn_k, m.knn_temperature, recipe.data.batch_size)
