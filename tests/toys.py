"""Tiny methods, backbones and datasets for the engine tests (no dependence on real models or data)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from tubelet.config.loader import from_dict

C, T, S = 3, 2, 4  # channels, frames, side


class ToyBackbone(nn.Module):
    """Embedding -> ``depth`` residual blocks -> norm -> head, with the layer-id API of the ViT."""

    def __init__(self, num_classes: int = 4, dim: int = 8, depth: int = 2, drop: float = 0.1) -> None:
        super().__init__()
        self.num_classes, self.embed_dim, self.num_prefix_tokens = num_classes, dim, 0
        self.patch_embed = nn.Linear(C * T * S * S, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(drop))
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def num_layers(self) -> int:
        return len(self.blocks)

    def get_layer_id(self, name: str) -> int:
        if name.startswith(("patch_embed", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch_embed(x.flatten(1)) + self.pos_embed
        for blk in self.blocks:
            h = h + blk(h)
        return self.norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class ToyMethod(nn.Module):
    """Supervised cross-entropy; returns extra scalars to be logged."""

    def __init__(self, num_classes: int = 4, drop: float = 0.1) -> None:
        super().__init__()
        self.backbone = ToyBackbone(num_classes, drop=drop)
        self.poison_at: int | None = None  # make the loss NaN on this call number
        self.calls = 0

    def classify(self, video: torch.Tensor) -> torch.Tensor:
        return self.backbone(video)

    def forward(self, batch: dict) -> dict:
        video, label = batch["video"], batch["label"]
        if video.ndim == 6:  # repeated sampling (B, r, ...) -> (B*r, ...)
            video, label = video.flatten(0, 1), label.flatten(0, 1)
        logits = self.backbone(video)
        loss = nn.functional.cross_entropy(logits, label)
        self.calls += 1
        if self.poison_at is not None and self.calls == self.poison_at:
            loss = loss * float("nan")
        acc = (logits.argmax(1) == label).float().mean()
        return {"loss": loss, "acc": acc}


class ToyVideos(Dataset):
    """Class-dependent videos with random noise drawn from the GLOBAL torch RNG (an "augmentation")."""

    def __init__(self, n: int = 12, num_classes: int = 4, noise: float = 0.5, repeat: int = 1) -> None:
        self.n, self.k, self.noise, self.repeat = n, num_classes, noise, repeat

    def __len__(self) -> int:
        return self.n

    def clip(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(index)
        base = torch.randn(C, T, S, S, generator=g) * 0.1
        base[index % C] += (index % self.k) * 0.5
        return base + self.noise * torch.rand(C, T, S, S)

    def __getitem__(self, index: int) -> dict:
        label = torch.tensor(index % self.k)
        if self.repeat > 1:
            return {"video": torch.stack([self.clip(index) for _ in range(self.repeat)]),
                    "label": label.repeat(self.repeat), "index": index}
        return {"video": self.clip(index), "label": label, "index": index}


class ToyViews(Dataset):
    """Test split: ``video`` holds all views (V, C, T, H, W) of one video, ``label`` a scalar."""

    def __init__(self, videos: torch.Tensor, labels: torch.Tensor) -> None:
        self.videos, self.labels = videos, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"video": self.videos[index], "label": self.labels[index], "index": index}


def toy_recipe(run_dir, **trainer):
    """A recipe for the toys: 1 thread, no progress bar, small steps."""
    t = {"max_steps": 6, "checkpoint_every_n_steps": 2, "keep_last_k": 2, "num_threads": 1,
         "log_every_n_steps": 1, "enable_progress_bar": False, "accelerator": "cpu"}
    t.update(trainer)
    return from_dict({
        "run_dir": str(run_dir), "seed": 3,
        "data": {"batch_size": 4, "num_workers": 0},
        "optim": {"lr": 0.05, "warmup_steps": 2, "warmup_lr": 0.0, "min_lr": 0.001, "weight_decay": 0.05},
        "trainer": t,
    })
