"""FLIP: Scaling Language-Image Pre-training via Masking (Li, Fan, Hu, Feichtenhofer, He; arXiv 2212.00794),
for images and for video.

CLIP's contrastive language-image objective with a random part of the image (or clip) tokens removed
before the vision encoder, so that a step costs less and the time saved buys more pairs or a bigger
batch (Sec. 3). For a batch of B pairs (globally, over every process):

1. **Vision tower.** The ViT (an image is a one-frame clip) or the space-time ViT: fixed sin-cos positions
   are added, then in training only a random ``mask_ratio`` of the tokens is removed (MAE's sort-noise
   procedure, ``K = floor(N (1 - ratio))``: 98 of 196 at 50%, 49 at 75%, 784 of 1568 video tubelets at
   50%) and only the kept ones enter the blocks (``forward_features(x, keep_idx)``). The feature is the
   average of the output tokens (no CLS).
2. **Text tower.** ``models/text.py``: a non-autoregressive Transformer over 32 tokens, position 0 pooled,
   padding masked out.
3. **Projection.** A bias-free Linear per tower into the joint space (``embed_dim``), then L2 normalisation.
4. **Loss.** With ``s = exp(clip(theta, 0, ln 100))``, ``logits_ij = s v_i . t_j`` over the global batch
   and ``L = 1/2 [mean_i (lse_j logits_ij - logits_ii) + mean_j (lse_i logits_ij - logits_jj)]``, computed
   with logsumexp (the JAX code's exp/sum can overflow float32 at s = 100). Each process scores its own
   rows against every process's columns (gathered with gradients), so the mean of the processes'
   losses is the loss of one process holding the whole batch, and DDP's gradient average is its gradient.

Decisions (METHODS.md Sec. 6):

* **Masking is training-only and explicit.** ``forward`` masks only in training mode; ``encode_video``,
  which zero-shot, retrieval, linear probing and prediction use, has no masking argument at all (open_clip's
  patch dropout cannot be forced at eval, its issue #758). ``mask_ratio: 0`` is CLIP, and the unmasked
  tuning phase (Sec. 3) is a recipe with ``mask_ratio: 0`` started from a FLIP checkpoint.
* **Per-sample masks.** A sample's mask is drawn from its own seed (``batch["sample_seed"]``, a function of
  the recipe seed, the epoch and its place in the epoch), so 1 and W processes draw the same masks.
* **Logit-scale clip in the forward**, as the JAX code: ``theta`` is a plain parameter and the forward uses
  ``clip(theta, 0, ln 100)``. open_clip instead clamps the parameter after the optimizer step. Clipping in
  the forward keeps the method a function of its parameters (no hook into an optimizer the engine owns)
  and the scale used is never above 100 either way; once theta is past ln 100 its gradient is 0 and
  it stays there. ``learn_logit_scale: false`` fixes the scale (ViCLIP: temperature 1/100).
* **Image pooling** averages the output tokens with no CLS (the paper); the JAX code includes a
  position-less CLS in the mean.
* **Tokenizing** happens here, not in the collate: the tokenizer's vocabulary defines the text tower's
  embedding table, zero-shot prompts need the same tokenizer without a data pipeline, and the data
  layer knows no models. It is a few microseconds per caption.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.config.bounds import (
    NONNEGATIVE, POSITIVE, POSITIVE_REAL, PROBABILITY_BELOW_ONE, Bound, bounded,
)
from tubelet.core.batch import Batch
from tubelet.core.dist import all_gather_no_grad, all_gather_with_grad, world_size
from tubelet.data.masking import mask_tokens, num_kept, seeded_noise
from tubelet.errors import ConfigError, DataError
from tubelet.methods.backbone import build_backbone, load_backbone_weights
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.models.registry import create_model
from tubelet.models.text import FLIP_TEMPLATES, get_tokenizer

LOGIT_SCALE_INIT = 1.0 / 0.07  # CLIP and FLIP: theta_0 = ln(1 / 0.07) = 2.6593
LOGIT_SCALE_MAX = 100.0  # clip theta to [0, ln 100]


@dataclass
class FLIPConfig(MethodConfig):
    """The ``method`` section of FLIP pre-training (and of its unmasked tuning, ``mask_ratio: 0``)."""

    name: str = "flip"
    mask_ratio: float = bounded(0.5, PROBABILITY_BELOW_ONE)  # training only: 0.5 (the final recipe) or 0.75; 0 = CLIP / unmasked tuning
    embed_dim: int = bounded(512, POSITIVE)  # joint space: B 512, L 768, H 1024
    text_model: str = "text_base"  # tubelet.list_models("text_*")
    text_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: Literal["bytes", "wordpiece", "bpe", "json"] = "bytes"
    vocab_file: str | None = None  # wordpiece: vocab.txt; bpe: vocab.json; json: tokenizer.json
    merges_file: str | None = None  # bpe: merges.txt
    context_length: int = bounded(32, POSITIVE)
    learn_logit_scale: bool = True  # false: fixed at logit_scale_init (ViCLIP: 100)
    logit_scale_init: float = bounded(LOGIT_SCALE_INIT, Bound(1, LOGIT_SCALE_MAX))  # theta in [0, ln 100]
    # zero-shot classification: prompts are template.format(class text), averaged per class (CLIP)
    templates: list[str] = field(default_factory=lambda: list(FLIP_TEMPLATES))
    class_texts: dict[str, str] = field(default_factory=dict)  # class name -> text (default: '_' -> ' ')
    # `tubelet test`: linear probe of the vision tower on the train split's features (0 steps: off)
    probe_steps: int = bounded(300, NONNEGATIVE)
    probe_lr: float = bounded(0.1, POSITIVE_REAL)
    probe_weight_decay: float = bounded(1e-4, NONNEGATIVE)


def flip_loss(zv: torch.Tensor, zt: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of this process's L2-normalised pairs ``zv, zt (B, E)`` against the global batch.

    Columns are every process's embeddings, gathered with gradients; row i's positive is column
    ``offset + i``. Processes may hold different numbers of pairs (a sample that failed to load): the
    gathered blocks are padded to the largest and the padding is masked out. With one process this is
    ``1/2 [CE(s V T^T, I) + CE(s T V^T, I)]``.
    """
    B = zv.shape[0]
    zv, zt = zv.float(), zt.float()
    s = logit_scale.float()
    valid = None
    if world_size() > 1:
        sizes = all_gather_no_grad(torch.tensor([B], device=zv.device)).tolist()
        most = max(sizes)
        if most > B:
            pad = zv.new_zeros(most - B, zv.shape[1])
            zv_p, zt_p = torch.cat([zv, pad]), torch.cat([zt, pad])
        else:
            zv_p, zt_p = zv, zt
        v_all, t_all = all_gather_with_grad(zv_p), all_gather_with_grad(zt_p)  # (W * most, E)
        if min(sizes) < most:
            valid = (torch.arange(most, device=zv.device)[None, :] < torch.tensor(sizes, device=zv.device)[:, None])
            valid = valid.reshape(1, -1)
    else:
        v_all, t_all = zv, zt
    logits_v = s * zv @ t_all.t()  # (B, columns): video i against every caption
    logits_t = s * zt @ v_all.t()  # (B, columns): caption i against every video
    if valid is not None:
        logits_v = logits_v.masked_fill(~valid, float("-inf"))
        logits_t = logits_t.masked_fill(~valid, float("-inf"))
    pos = s * (zv * zt).sum(dim=-1)  # row i's own pair: column rank * most + i of either
    return 0.5 * ((torch.logsumexp(logits_v, dim=1) - pos).mean() + (torch.logsumexp(logits_t, dim=1) - pos).mean())


class Projections(nn.Module):
    """The two bias-free projections into the joint space and the logit scale theta (s = exp(theta))."""

    def __init__(self, vision_dim: int, text_dim: int, embed_dim: int, learn_scale: bool, scale_init: float) -> None:
        super().__init__()
        if not 1.0 <= scale_init <= LOGIT_SCALE_MAX:
            raise ConfigError(f"method.logit_scale_init must be in [1, {LOGIT_SCALE_MAX:g}], got {scale_init}")
        self.vision = nn.Linear(vision_dim, embed_dim, bias=False)
        self.text = nn.Linear(text_dim, embed_dim, bias=False)
        theta = torch.tensor(math.log(scale_init))
        if learn_scale:
            self.logit_scale = nn.Parameter(theta)
        else:
            self.register_buffer("logit_scale", theta)
        # CLIP's init: std = width ** -0.5
        nn.init.normal_(self.vision.weight, std=vision_dim**-0.5)
        nn.init.normal_(self.text.weight, std=text_dim**-0.5)

    def scale(self) -> torch.Tensor:
        """``s = exp(clip(theta, 0, ln 100))``, clipped here in the forward (FLIP's JAX code)."""
        return self.logit_scale.clamp(0.0, math.log(LOGIT_SCALE_MAX)).exp()


class FLIP(nn.Module):
    """Vision tower ``backbone`` (a ViT with ``forward_features(x, keep_idx)``) and text tower ``text``
    trained with the symmetric global InfoNCE. ``encode_video`` / ``encode_text`` give the normalised
    joint embeddings (never masked); ``forward(batch)`` masks in training mode only."""

    def __init__(self, backbone: nn.Module, text: nn.Module, tokenizer: Any, cfg: FLIPConfig) -> None:
        super().__init__()
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in [0, 1) (FLIP: 0.5 or 0.75), got {cfg.mask_ratio}")
        if getattr(backbone, "num_classes", 0):
            raise ConfigError("FLIP's vision tower is built without a classifier (model.num_classes is ignored)")
        self.backbone = backbone
        self.text = text
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.mask_ratio = float(cfg.mask_ratio)
        self.templates = list(cfg.templates)
        self.class_texts = dict(cfg.class_texts)
        self.proj = Projections(backbone.embed_dim, text.embed_dim, cfg.embed_dim, cfg.learn_logit_scale,
                                cfg.logit_scale_init)

    def no_weight_decay(self) -> set[str]:
        # biases and norms are 1-D (no decay by the optimizer's rule); positions and the scale by name
        return {f"text.{n}" for n in self.text.no_weight_decay()} | {"proj.logit_scale"}

    # -- towers -------------------------------------------------------------------------------------
    def grid_of(self, video: torch.Tensor) -> tuple[int, int, int]:
        return tuple(self.backbone.token_grids(*video.shape[-3:])[0])

    def num_kept(self, video: torch.Tensor) -> int:
        """Tokens the vision encoder sees for ``video`` in training (all of them at ``mask_ratio`` 0)."""
        return num_kept(math.prod(self.grid_of(video)), self.mask_ratio)

    def _vision(self, video: torch.Tensor, keep_idx: torch.Tensor | None) -> torch.Tensor:
        tokens = self.backbone.forward_features(video, keep_idx=keep_idx)
        pooled = self.backbone.forward_head(tokens, pre_logits=True)  # mean of the (kept) output tokens
        return F.normalize(self.proj.vision(pooled), dim=-1)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, embed_dim)``, L2-normalised, from every token (no masking, ever)."""
        return self._vision(video, None)

    def tokenize(self, texts: Sequence[str], device: torch.device | None = None) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(device or self.proj.text.weight.device)

    def encode_text(self, texts: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Captions (strings, or token ids ``(B, L)``) -> ``(B, embed_dim)``, L2-normalised."""
        ids = texts if torch.is_tensor(texts) else self.tokenize(texts)
        return F.normalize(self.proj.text(self.text(ids)), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.proj.scale()

    # -- training -----------------------------------------------------------------------------------
    def train_mask(self, video: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """``keep (B, K)`` token indices of a fresh random mask; from each sample's seed when given."""
        grid = self.grid_of(video)
        noise = seeded_noise(seeds.tolist(), math.prod(grid)).to(video.device) if seeds is not None else None
        return mask_tokens(video.shape[0], grid, self.mask_ratio, "random", device=video.device, noise=noise).keep

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        video = batch["video"]
        if video.ndim != 5:
            raise ConfigError(f"FLIP pairs one clip with one caption: expected video (B, C, T, H, W), got "
                              f"{tuple(video.shape)} (set data.repeated_sampling: 1 and data.rho.clips: 0)")
        captions = batch.get("caption")
        if captions is None or len(captions) != video.shape[0]:
            raise DataError("FLIP needs a caption per clip (batch['caption']); use a caption manifest or the "
                            "synthetic set with data.captions: true")
        keep = None
        if self.training and self.mask_ratio > 0:
            keep = self.train_mask(video, batch.get("sample_seed"))
        zv = self._vision(video, keep)
        zt = self.encode_text(captions)
        s = self.logit_scale()
        loss = flip_loss(zv, zt, s)
        kept = keep.shape[1] if keep is not None else math.prod(self.grid_of(video))
        return {"loss": loss, "logit_scale": s.detach(), "kept_tokens": torch.tensor(float(kept))}


@register_method("flip", FLIPConfig)
def build(recipe: Recipe, context: RunContext) -> FLIP:
    """FLIP from a recipe: the vision tower is ``model.name`` without a classifier; the text tower
    ``method.text_model`` sized to the tokenizer. ``model.checkpoint`` initialises the vision tower by the
    shared policy; when the file is a FLIP method's (it has ``text.`` and ``proj.`` tensors, e.g. for
    unmasked tuning), the text tower and projections load from it by the same policy."""
    cfg: FLIPConfig = recipe.method
    if not recipe.data.captions:
        raise ConfigError("method flip trains on captions: set data.captions: true (every clip then needs one)")
    backbone = build_backbone(recipe.model, num_classes=0)
    if not hasattr(backbone, "token_grids") or "keep_idx" not in inspect.signature(backbone.forward_features).parameters:
        raise ConfigError(f"model {recipe.model.name}: FLIP's vision tower must be a ViT that encodes a subset of "
                          "tokens (forward_features(x, keep_idx)); use a vit_* model")
    tokenizer = get_tokenizer(cfg.tokenizer, cfg.vocab_file, cfg.merges_file, cfg.context_length)
    text = create_model(cfg.text_model, **{"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
                                           "context_length": cfg.context_length, **cfg.text_overrides})
    method = FLIP(backbone, text, tokenizer, cfg)
    path = recipe.model.checkpoint
    if path:
        from tubelet.models.weights import read_state_dict

        keys = read_state_dict(path).keys()
        if any(k.startswith("text.") for k in keys):
            method.text.load_report = load_backbone_weights(method.text, path, prefixes=("text.",))
            method.proj.load_report = load_backbone_weights(method.proj, path, prefixes=("proj.",))
    return method
