"""Linear probe on frozen features (CLIP, arXiv 2103.00020, Sec. 3.2; FLIP, arXiv 2212.00794, Table 3):
a linear classifier fitted on the training clips' features and scored on the test clips'.

Features (``(N, D)``, e.g. ``eval.knn.extract_features``: pooled, L2-normalised) are standardised with
the training set's per-channel mean and standard deviation; the classifier is fitted full-batch (every
feature is in memory) with AdamW on the cross entropy, ``steps`` steps. CLIP fits an L-BFGS logistic
regression with a searched L2 penalty; a fixed small weight decay is the light version of that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tubelet.errors import TubeletError


def linear_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                          test_labels: torch.Tensor, num_classes: int, steps: int = 300, lr: float = 0.1,
                          weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Top-1 accuracy on ``test`` of a linear classifier fitted on ``train`` (labels ``(N,)`` int)."""
    if train.shape[0] == 0 or test.shape[0] == 0:
        raise TubeletError("the linear probe needs training and test features")
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise TubeletError(f"linear probe labels must be classes 0..{num_classes - 1}")
    x, xt = train.float(), test.float()
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], num_classes, generator=g) * 0.01).requires_grad_(True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    y = train_labels.long()
    with torch.enable_grad():
        for _ in range(int(steps)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(x @ w + b, y).backward()
            opt.step()
    with torch.no_grad():
        pred = (xt @ w + b).argmax(dim=1)
    return float((pred == test_labels.long()).float().mean())
