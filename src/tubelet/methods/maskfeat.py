"""MaskFeat: Masked Feature Prediction for Self-Supervised Visual Pre-Training (Wei et al., arXiv 2112.09133).

Part of the input is masked *after* the patch embedding, the encoder processes the whole sequence
(nothing is dropped, unlike MAE), and a linear head regresses a hand-crafted feature of the masked
regions: Histograms of Oriented Gradients (``methods/hog.py``). METHODS.md §3; details follow PySlowFast's
``MaskMViT`` (the paper's text gives only the abstract-level description).

For a clip ``x (B, C, T, H, W)`` (normalised) and a unit mask ``u (B, T_u, H_u, W_u)`` (True = masked):

1. **Mask** (§3.3-3.4). Video: cube masks on the unit grid (8x7x7 for 16x224x224; a unit is 1x2x2
   output tokens), 40% = at most 157 units; images: BEiT block masks on 14x14 tokens (78 of 196).
   ``u`` is nearest-upsampled to the stem grid (``m_s``, e.g. 8x56x56 for MViTv2-S) and to the output
   grid (``m``, 8x14x14).
2. **Encode** (§3.2). After the patch embedding ``z (B, N_s, D_s)``:
   ``z <- z * (1 - m_s) + w_mask * m_s`` with one learned vector ``w_mask`` (trunc-normal 0.02, before
   positions for the ViT); then every block runs on all tokens. MViTv2 is built with the last stage's
   query stride removed (``q_stride_last_stage=False``), so its output stays at 8x14x14 = N tokens at
   stride 16. Tokens ``y (B, N, D)`` (CLS dropped).
3. **Predict** (§3.6). ``p = Linear(LN(y))``, ``(B, N, d)``; ``d = 108 * f`` for HOG (2x2 cells x 9
   bins x 3 channels per 16x16 token, ``f`` HOG frames per token time, 1 in the paper's setting).
4. **Target** (§3.5). HOG of frames 0, 2, ..., 14 (one per 2-frame cube) cut per token, ``t (B, N, d)``,
   under no-grad on the normalised input. Alternatives: ``pixel_norm`` (the same frames' pixels per
   token, standardised per token with the unbiased variance and eps 1e-6, as MAE) and ``pixel``.
5. **Loss.** MSE over masked tokens only::

       L = sum_{b,n} m[b,n] * mean_k (p[b,n,k] - t[b,n,k])^2  /  sum_{b,n} m[b,n]

   (PySlowFast's ``mse(pred[mask], target[mask])``: every masked token weighs the same, whichever clip it
   comes from; samples may mask slightly different counts).

Decisions:

* **Head LN.** The head is LayerNorm + Linear as the reference's ``MSSeparateHead``; the reference also
  deletes the backbone's final norm, here the backbone stays intact (its ``backbone.safetensors`` then
  loads into any classifier without missing keys), so the head's LN follows the backbone's norm (an
  extra affine, no effect on what can be represented).
* **Where masks are drawn.** In ``forward`` on the CPU (a loop over blocks, about 1 ms per 8x7x7 mask),
  from the global RNG (seeded by the engine) or a passed ``torch.Generator``.
* **Repeated sampling.** ``(B, r, C, T, H, W)`` is flattened to ``B*r`` clips, each with its own mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from tubelet.config.bounds import POSITIVE, UNIT_OPEN, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.data.masking import MASKFEAT_MASK_TYPES, maskfeat_masks, upsample_unit_mask
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.hog import HOGLayer, hog_video_targets
from tubelet.methods.registry import register_method
from tubelet.models.base import Backbone

TARGETS = ("hog", "pixel_norm", "pixel")


@dataclass
class MaskFeatConfig(MethodConfig):
    """The ``method`` section of MaskFeat pre-training."""

    name: str = "maskfeat"
    mask_ratio: float = bounded(0.4, UNIT_OPEN)  # 0 would leave nothing to predict, 1 nothing to see
    mask_type: Literal["cube", "tube", "frame", "block"] = "cube"  # block: images (BEiT)
    mask_unit: list[int] = bounded([1, 2, 2], POSITIVE, length=3)  # output tokens per mask unit (t, h, w)
    target: Literal["hog", "pixel_norm", "pixel"] = "hog"
    hog_bins: int = bounded(9, POSITIVE)
    hog_cell: int = bounded(8, POSITIVE)  # pixels per HOG cell side
    target_frame_stride: int = bounded(2, POSITIVE)  # targets use frames 0, s, 2s, ... (the first frame of each 2-frame cube)
NORM_PIX_EPS = 1e-6
Grid = tuple[int, int, int]


def backbone_grids(backbone: Backbone, num_frames: int, height: int, width: int) -> tuple[Grid, Grid]:
    """(stem grid, output grid) of a backbone for an input size: where masks replace tokens and where
    the loss is taken. Equal for the plain ViT; MViT pools in between."""
    return backbone.token_grids(num_frames, height, width)


def pixel_targets(video: torch.Tensor, grid: Sequence[int], frame_stride: int = 2) -> torch.Tensor:
    """Pixels per token of frames ``0, s, 2s, ...``: ``(B, C, T, H, W) -> (B, N, f * C * ph * pw)``.

    Token ``(t, h, w)`` owns ``f`` of those frames and a ``ph x pw = H/H' x W/W'`` patch; values ordered
    (frame, channel, row, column).
    """
    if video.ndim == 4:
        video = video.unsqueeze(2)
    frames = video[:, :, ::frame_stride]
    B, C, th, H, W = frames.shape
    t, gh, gw = grid
    if th % t or H % gh or W % gw:
        raise ValueError(f"{th}x{H}x{W} target frames do not split over a {tuple(grid)} token grid")
    f, ph, pw = th // t, H // gh, W // gw
    x = frames.reshape(B, C, t, f, gh, ph, gw, pw).permute(0, 2, 4, 6, 3, 1, 5, 7)  # (B,t,gh,gw,f,C,ph,pw)
    return x.reshape(B, t * gh * gw, f * C * ph * pw)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(m * mean_k (p - t)^2) / sum(m)`` over ``(B, N)`` tokens; 0 when nothing is masked."""
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, N)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


class MaskFeat(nn.Module):
    """Masked feature prediction around a ViT or MViTv2 backbone (arXiv 2112.09133; module docstring).

    ``backbone`` must accept ``forward_features(x, token_mask=(B, N_stem), mask_token=(D_stem,))``.
    ``input_size = (T, H, W)`` sizes the head (the target width depends on the token's pixel extent).
    """

    def __init__(self, backbone: nn.Module, cfg: MaskFeatConfig, input_size: Sequence[int]) -> None:
        super().__init__()
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise ValueError(f"method.mask_ratio must be in [0, 1), got {cfg.mask_ratio}")
        if cfg.target not in TARGETS:
            raise ValueError(f"method.target must be one of {', '.join(TARGETS)}, got '{cfg.target}'")
        if cfg.mask_type not in MASKFEAT_MASK_TYPES:
            raise ValueError(f"method.mask_type must be one of {', '.join(MASKFEAT_MASK_TYPES)}, got '{cfg.mask_type}'")
        if len(cfg.mask_unit) != 3 or min(cfg.mask_unit) < 1:
            raise ValueError(f"method.mask_unit must be three positive token counts (t, h, w), got {cfg.mask_unit}")
        self.backbone = backbone
        self.cfg = cfg
        self.in_chans = int(backbone.in_chans)
        stem_dim = int(backbone.stem_dim)
        self.mask_token = nn.Parameter(torch.zeros(stem_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.hog = HOGLayer(cfg.hog_bins, cfg.hog_cell, self.in_chans)
        T, H, W = (int(s) for s in input_size)
        self.target_dim = self._target_dim(T, H, W)
        self.head_norm = nn.LayerNorm(backbone.embed_dim, eps=1e-6)
        self.head = nn.Linear(backbone.embed_dim, self.target_dim)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    # -- geometry ------------------------------------------------------------------------------------

    def grids(self, video: torch.Tensor) -> tuple[Grid, Grid]:
        T, H, W = (1, *video.shape[-2:]) if video.ndim == 4 else video.shape[-3:]
        return backbone_grids(self.backbone, int(T), int(H), int(W))

    def unit_grid(self, out_grid: Sequence[int]) -> Grid:
        """The mask's unit grid: output grid / ``mask_unit`` (8x14x14 / 1x2x2 = 8x7x7)."""
        unit = [min(int(u), g) for u, g in zip(self.cfg.mask_unit, out_grid)]
        if any(g % u for g, u in zip(out_grid, unit)):
            raise ValueError(f"mask_unit {tuple(unit)} does not divide the output token grid {tuple(out_grid)}")
        return tuple(g // u for g, u in zip(out_grid, unit))  # type: ignore[return-value]

    def _target_dim(self, T: int, H: int, W: int) -> int:
        _, (t, h, w) = backbone_grids(self.backbone, T, H, W)
        s = self.cfg.target_frame_stride
        frames = len(range(0, T, s))
        if frames % t:
            raise ValueError(f"{frames} target frames (every {s} of {T}) do not split over {t} token times")
        f = frames // t
        if self.cfg.target == "hog":
            cell = self.cfg.hog_cell
            if (H // cell) % h or (W // cell) % w:
                raise ValueError(f"{H // cell}x{W // cell} HOG cells of {cell} px do not split over {h}x{w} tokens")
            return f * self.in_chans * self.cfg.hog_bins * (H // cell // h) * (W // cell // w)
        return f * self.in_chans * (H // h) * (W // w)

    # -- masks, targets, loss ------------------------------------------------------------------------

    def random_mask(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, T_u, H_u, W_u)`` bool unit masks (CPU) of the configured type and ratio."""
        _, out = self.grids(video)
        return maskfeat_masks(video.shape[0], self.unit_grid(out), self.cfg.mask_ratio, self.cfg.mask_type, generator)

    @torch.no_grad()
    def targets(self, video: torch.Tensor, out_grid: Sequence[int]) -> torch.Tensor:
        """Per-token targets ``(B, N, target_dim)`` on the output grid (float32, no gradient)."""
        s = self.cfg.target_frame_stride
        if self.cfg.target == "hog":
            return hog_video_targets(self.hog, video, tuple(out_grid), s)
        target = pixel_targets(video.float(), out_grid, s)
        if self.cfg.target == "pixel_norm":
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        return target

    def predict(self, video: torch.Tensor, unit_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions ``(B, N, target_dim)`` for every output token and the output-grid mask ``(B, N)``."""
        stem, out = self.grids(video)
        unit_mask = unit_mask.to(video.device)
        stem_mask = upsample_unit_mask(unit_mask, stem)  # (B, N_stem)
        out_mask = upsample_unit_mask(unit_mask, out)  # (B, N)
        tokens = self.backbone.forward_features(video, token_mask=stem_mask, mask_token=self.mask_token)
        tokens = tokens[:, self.backbone.num_prefix_tokens :]  # (B, N, D), CLS dropped
        if tokens.shape[1] != out_mask.shape[1]:
            raise ValueError(f"backbone gave {tokens.shape[1]} tokens for a {out} output grid")
        return self.head(self.head_norm(tokens)), out_mask

    def forward(self, batch: Batch, mask: torch.Tensor | None = None) -> dict:
        video = batch["video"]
        if video.ndim == 6:  # repeated sampling: (B, r, C, T, H, W) -> (B*r, C, T, H, W)
            video = video.flatten(0, 1)
        if mask is None:
            mask = self.random_mask(video)
        pred, out_mask = self.predict(video, mask)
        target = self.targets(video, self.grids(video)[1])
        loss = masked_mse(pred, target, out_mask)
        return {"loss": loss, "mask_fraction": out_mask.float().mean().detach()}

    # -- visualisation -------------------------------------------------------------------------------

    @torch.no_grad()
    def hog_maps(self, video: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Target and predicted HOG as cell maps for display (``target="hog"`` only).

        Returns ``target`` and ``pred`` ``(B, Th, C, bins, Hc, Wc)``, the HOG frames ``frames (B, C, Th,
        H, W)`` and the cell-level mask ``mask (B, Th, Hc, Wc)`` (True = masked).
        """
        if self.cfg.target != "hog":
            raise ValueError("hog_maps needs method.target='hog'")
        if video.ndim == 4:
            video = video.unsqueeze(2)
        if mask is None:
            mask = self.random_mask(video, generator)
        pred, out_mask = self.predict(video, mask)
        _, out = self.grids(video)
        target = self.targets(video, out)
        frames = video[:, :, :: self.cfg.target_frame_stride]
        B, C, th, H, W = frames.shape
        t, gh, gw = out
        f = th // t
        nb, cell = self.cfg.hog_bins, self.cfg.hog_cell
        hc, wc = H // cell, W // cell
        kh, kw = hc // gh, wc // gw

        def to_map(tokens: torch.Tensor) -> torch.Tensor:  # (B, N, f*C*nb*kh*kw) -> (B, Th, C, nb, Hc, Wc)
            x = tokens.float().reshape(B, t, gh, gw, f, C, nb, kh, kw).permute(0, 1, 4, 5, 6, 2, 7, 3, 8)
            return x.reshape(B, th, C, nb, hc, wc)

        m = out_mask.view(B, t, 1, gh, 1, gw, 1).expand(B, t, f, gh, kh, gw, kw).reshape(B, th, hc, wc)
        return {"target": to_map(target), "pred": to_map(pred), "frames": frames, "mask": m}


@register_method("maskfeat", MaskFeatConfig)
def build(recipe: Recipe, context: RunContext) -> MaskFeat:
    """MaskFeat from a recipe; the backbone has no classification head (``num_classes=0``).

    MViT backbones are built with ``q_stride_last_stage=False`` unless ``model.overrides`` says otherwise
    (the pre-training geometry, §3.1). ``model.checkpoint`` (optional) initialises the backbone.
    """
    m = recipe.model
    backbone = build_backbone(m, num_classes=0, q_stride_last_stage=False)
    image_model = getattr(getattr(backbone, "cfg", None), "video", True) is False  # MViT image variants
    frames = 1 if image_model else m.num_frames
    return MaskFeat(backbone, recipe.method, (frames, m.img_size, m.img_size))
