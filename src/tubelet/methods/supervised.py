"""Supervised classification: a backbone trained with (soft-target) cross entropy.

The fine-tuning objective shared by every video transformer paper the library follows (e.g. MAE-ST,
arXiv 2205.09113, Sec. 4 and Appendix A.2; MViTv2, arXiv 2112.01526, Sec. 5): cross entropy with label
smoothing on hard labels, or soft-target cross entropy when mixup/cutmix turned labels into ``(B, K)``
distributions. Repeated sampling (``r`` clips per video) is flattened into the batch.

``build(recipe)`` creates the backbone from ``recipe.model``; when ``model.checkpoint`` is set it loads
a pre-trained backbone (e.g. from MAE-ST) non-strictly: everything but a classifier head that is missing
or has another shape must fit, decoder/mask-token weights of the pre-training method are ignored, and
the fresh head keeps its initialisation. What was skipped is logged.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.config.schema import Recipe
from tubelet.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# Parameters a classifier adds on top of a pre-trained encoder (MAE-style fine-tuning re-creates them).
HEAD_PREFIXES = ("head.", "fc_norm.")
# Prefixes under which a method checkpoint stores the backbone; stripped when present.
BACKBONE_PREFIXES = ("backbone.", "encoder.", "model.")


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_k -target[b,k] * log_softmax(logits)[b,k]`` for ``(B, K)`` targets (timm's SoftTargetCE)."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


class Supervised(nn.Module):
    """``forward(batch) -> {"loss", "acc"}``; ``classify(video (B,C,T,H,W)) -> logits (B, K)``."""

    def __init__(self, backbone: nn.Module, label_smoothing: float = 0.0, head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.label_smoothing = float(label_smoothing)
        self.head_drop = nn.Dropout(head_dropout) if head_dropout > 0 else None

    @property
    def num_classes(self) -> int:
        return int(self.backbone.num_classes)

    def classify(self, video: torch.Tensor) -> torch.Tensor:
        if self.head_drop is None:
            return self.backbone(video)
        # Dropout sits between the pooled feature and the linear classifier (MAE-ST fine-tuning).
        feats = self.backbone.forward_head(self.backbone.forward_features(video), pre_logits=True)
        return self.backbone.head(self.head_drop(feats))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        video, label = batch["video"], batch["label"]
        if video.dim() == 6:  # repeated sampling: (B, r, C, T, H, W) -> (B*r, C, T, H, W)
            B, r = video.shape[:2]
            video = video.flatten(0, 1)
            if label.shape[:2] == (B, r):  # per-clip labels (B, r) or soft (B, r, K)
                label = label.flatten(0, 1)
            else:  # one label per video, shared by its r clips
                label = label.repeat_interleave(r, dim=0)
        logits = self.classify(video)
        if label.dim() == 2 and label.is_floating_point():
            loss = soft_target_cross_entropy(logits, label)
            hard = label.argmax(dim=-1)  # accuracy against the dominant class of a mixed target
        else:
            hard = label.long()
            loss = F.cross_entropy(logits, hard, label_smoothing=self.label_smoothing)
        acc = (logits.detach().argmax(dim=-1) == hard).float().mean()
        return {"loss": loss, "acc": acc}


def load_backbone_checkpoint(backbone: nn.Module, path: str) -> dict[str, list[str]]:
    """Load pre-trained weights into ``backbone`` except a head that is missing or differs in shape.

    Returns the lists ``loaded``, ``head_reinit`` (kept at their fresh initialisation) and ``ignored``
    (checkpoint tensors with no place in the backbone, e.g. an MAE decoder). Any other missing key or shape
    mismatch is a CheckpointError that lists them.
    """
    from tubelet.models.weights import read_state_dict

    state = read_state_dict(path)
    own = backbone.state_dict()
    ignored = []
    for prefix in BACKBONE_PREFIXES:  # a full-method checkpoint: keep only the backbone's tensors
        if any(k.startswith(prefix) for k in state) and not any(k in own for k in state):
            ignored = [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    is_head = lambda k: k.startswith(HEAD_PREFIXES)  # noqa: E731
    # MViTv2 relative-position tables whose length follows the token grid (e.g. MaskFeat pre-trains
    # without the last stage's query stride) are resampled linearly, as the checkpoint converter does.
    from tubelet.models.layers.rel_pos import interpolate_rel_pos

    for k, v in list(state.items()):
        if (k.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w", "rel_pos_t") and k in own and v.ndim == 2
                and own[k].ndim == 2 and v.shape[1] == own[k].shape[1] and v.shape[0] != own[k].shape[0]):
            state[k] = interpolate_rel_pos(v.float(), own[k].shape[0]).to(v.dtype)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched if not is_head(k)]
    missing = [k for k in own if k not in state and not is_head(k)]
    if bad or missing:
        lines = [f"{path}: weights do not fit {type(backbone).__name__}"]
        if bad:
            lines.append("shape mismatches:\n  " + "\n  ".join(bad))
        if missing:
            lines.append("missing keys:\n  " + "\n  ".join(missing))
        raise CheckpointError("\n".join(lines))
    load = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head_reinit = sorted(k for k in own if is_head(k) and k not in load)
    ignored = sorted(ignored + [k for k in state if k not in own])
    backbone.load_state_dict(load, strict=False)
    log.warning(
        "loaded %d tensors from %s; head re-initialised (%s); ignored %d checkpoint tensors not in the backbone%s",
        len(load), path, ", ".join(head_reinit) or "none", len(ignored),
        f" ({', '.join(ignored[:4])}{', ...' if len(ignored) > 4 else ''})" if ignored else "",
    )
    return {"loaded": sorted(load), "head_reinit": head_reinit, "ignored": ignored}


def build_backbone(recipe: Recipe) -> nn.Module:
    from tubelet.models.registry import create_model

    m = recipe.model
    kwargs = dict(
        num_classes=m.num_classes, num_frames=m.num_frames, img_size=m.img_size, drop_path_rate=m.drop_path_rate
    )
    kwargs.update(m.overrides)
    backbone = create_model(m.name, **kwargs)
    if m.checkpoint:
        load_backbone_checkpoint(backbone, m.checkpoint)
    return backbone


def build(recipe: Recipe) -> Supervised:
    d = recipe.data
    if d.kind == "synthetic" and recipe.model.num_classes != d.synthetic.num_classes:
        raise ConfigError(
            f"model.num_classes={recipe.model.num_classes} but data.synthetic.num_classes={d.synthetic.num_classes}"
        )
    return Supervised(
        build_backbone(recipe),
        label_smoothing=d.augment.label_smoothing,
        head_dropout=getattr(recipe.method, "head_dropout", 0.0),
    )
