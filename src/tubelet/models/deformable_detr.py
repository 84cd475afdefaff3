"""Deformable DETR (Zhu et al., arXiv 2010.04159, ICLR 2021), the single-stage detector without iterative box
refinement or two-stage proposals: UTT's detector for multi-object tracking (arXiv 2203.15175, Sec. 4.1).

``DeformableDETR(images (B, 3, H, W) normalised)`` returns ``{"logits": (B, Q, K), "boxes": (B, Q, 4),
"aux": [{"logits", "boxes"} per earlier decoder layer]}``, boxes ``cxcywh`` normalised to the image.

1. Backbone (Sec. 4.1, "multi-scale feature maps"): a 2-D ResNet's C3-C5 (strides 8, 16, 32), each a 1x1
   conv to ``dim`` + GroupNorm (32 groups at 256: 8 channels a group), and a fourth level (stride 64) from
   a 3x3 stride-2 conv on C5 + GroupNorm. An ImageNet ResNet file given as ``model.checkpoint`` loads into
   the backbone (:func:`checkpoint_filter_fn`, ``init_only_keys``).
2. Positions: the sine code of DETR on coordinates normalised to ``[0, 2 pi]`` (``(i + 0.5) / H``), half of
   the channels for y and half for x, plus a learnt embedding per level ``e_l`` (Appendix A.2).
3. Encoder, ``encoder_layers`` times (post-norm): ``x = LN(x + MSDeformAttn(x + pos, p, x))``,
   ``x = LN(x + FFN(x))``, every pixel's reference point ``p`` its own normalised centre on every level.
4. Decoder, ``decoder_layers`` times: ``Q`` learnt queries ``(query_pos, tgt)``; self-attention over the
   queries, deformable cross-attention to the encoder's memory at the reference point
   ``p_q = sigmoid(Linear(query_pos))``, FFN; each a residual and LN.
5. Heads, shared by every decoder layer: classes ``Linear(dim, K)`` with the bias at the focal prior
   ``-log((1 - pi) / pi)`` (``pi = 0.01``: -4.595, so every query starts at 1 % foreground and the
   focal loss is not swamped by the background in the first steps); boxes: a 3-layer MLP whose
   ``(dx, dy)`` add to ``inverse_sigmoid(p_q)`` before the sigmoid (eq. in Appendix A.4), started at zero
   offset and ``sigmoid(-2)`` size.

Batches are images of one size (no padding mask): all valid ratios are 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tubelet.models.layers.deform_attn import MSDeformAttn
from tubelet.models.layers.pos_embed import sincos_1d
from tubelet.models.registry import create_model, register_model
from tubelet.models.resnet2d import ResNet2d

__all__ = ["DeformableDETR", "DeformableDETRConfig", "checkpoint_filter_fn", "inverse_sigmoid", "sine_positions"]


@dataclass(frozen=True)
class DeformableDETRConfig:
    backbone: str = "resnet50_image"  # the paper's R-50 (UTT's ablations: R-18)
    num_classes: int = 1  # MOT: pedestrians, one class (COCO: 91)
    dim: int = 256
    heads: int = 8  # M
    levels: int = 4  # L: strides 8, 16, 32 of the backbone, then stride-2 convs (one: stride 64)
    points: int = 4  # K sampling points per head and level
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 1024
    dropout: float = 0.1
    num_queries: int = 500  # UTT (METHODS.md Sec. 9); Deformable DETR on COCO: 300
    prior_prob: float = 0.01  # the class bias -log((1 - p) / p) = -4.595


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_positions(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """DETR's normalised sine code ``(h * w, dim)`` of a map's pixel centres: the first ``dim / 2`` channels
    encode ``y = 2 pi (i + 0.5) / h``, the rest ``x = 2 pi (j + 0.5) / w`` (each half sines then cosines)."""
    if dim % 4:
        raise ValueError(f"sine positions need a dimension divisible by 4, got {dim}")
    ys = (torch.arange(h, device=device, dtype=torch.float64) + 0.5) / h * (2 * math.pi)
    xs = (torch.arange(w, device=device, dtype=torch.float64) + 0.5) / w * (2 * math.pi)
    py, px = sincos_1d(ys, dim // 2), sincos_1d(xs, dim // 2)  # (h, dim/2), (w, dim/2)
    return torch.cat([py[:, None, :].expand(h, w, -1), px[None, :, :].expand(h, w, -1)], -1).reshape(h * w, dim)


def _ffn(dim: int, hidden: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(drop), nn.Linear(hidden, dim),
                         nn.Dropout(drop))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: DeformableDETRConfig) -> None:
        super().__init__()
        self.attn = MSDeformAttn(cfg.dim, cfg.levels, cfg.heads, cfg.points)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.ffn = _ffn(cfg.dim, cfg.ffn_dim, cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x + pos, ref, x, shapes)))
        return self.norm2(x + self.ffn(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DeformableDETRConfig) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(cfg.dim, cfg.levels, cfg.heads, cfg.points)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.drop1, self.drop2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)
        self.ffn = _ffn(cfg.dim, cfg.ffn_dim, cfg.dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, ref: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, q, tgt, need_weights=False)[0]))
        tgt = self.norm2(tgt + self.drop2(self.cross_attn(tgt + query_pos, ref, memory, shapes)))
        return self.norm3(tgt + self.ffn(tgt))


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An image ResNet's weights (torchvision / timm names, as ImageNet files have them) become the detector's
    ``backbone.`` tensors, its classifier ``fc`` dropped: the paper's ImageNet-initialised backbone through
    ``model.checkpoint``. A detector's own weights pass unchanged."""
    if "conv1.weight" in state and not any(k.startswith("backbone.") for k in state):
        return {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    return state


class DeformableDETR(nn.Module):
    # the backbone builder's loading policy: see init_only_keys
    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(self, cfg: DeformableDETRConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        if cfg.levels < 1 or cfg.num_queries < 1 or cfg.decoder_layers < 1 or cfg.num_classes < 1:
            raise ValueError(f"Deformable DETR needs levels, num_queries, decoder_layers and num_classes >= 1, got "
                             f"{cfg.levels}, {cfg.num_queries}, {cfg.decoder_layers}, {cfg.num_classes}")
        if cfg.dim % 4 or cfg.dim % cfg.heads:
            raise ValueError(f"Deformable DETR dim {cfg.dim} must be divisible by 4 and by heads {cfg.heads}")
        self.cfg = cfg
        backbone = create_model(cfg.backbone, num_classes=0) if backbone is None else backbone
        if not isinstance(backbone, ResNet2d):
            raise ValueError(f"Deformable DETR backbone '{cfg.backbone}' is not a 2-D ResNet "
                             "(resnet18_image, resnet50_image)")
        self.backbone = backbone
        # the last min(L, 3) of strides 8, 16, 32; levels beyond 3 are stride-2 convs from the previous one
        self.strides = (8, 16, 32)[3 - min(cfg.levels, 3):]
        # GroupNorm(32) on the paper's 256 channels is 8 channels a group; narrower models keep the 8, so the
        # 1x1 stride-64 level of a small image is not normalised to zero
        d, groups = cfg.dim, math.gcd(32, max(1, cfg.dim // 8))
        projs = [nn.Sequential(nn.Conv2d(backbone.channels(s), d, 1), nn.GroupNorm(groups, d)) for s in self.strides]
        cin = backbone.channels(32)
        for _ in range(cfg.levels - len(self.strides)):
            projs.append(nn.Sequential(nn.Conv2d(cin, d, 3, 2, 1), nn.GroupNorm(groups, d)))
            cin = d
        self.input_proj = nn.ModuleList(projs)
        self.level_embed = nn.Parameter(torch.empty(cfg.levels, d))
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.query_embed = nn.Embedding(cfg.num_queries, 2 * d)  # (query_pos, tgt) per query
        self.reference_points = nn.Linear(d, 2)
        self.class_embed = nn.Linear(d, cfg.num_classes)
        self.bbox_embed = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, d), nn.ReLU(inplace=True),
                                        nn.Linear(d, 4))
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for layers in (self.encoder, self.decoder):
            for p in layers.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
            for m in layers.modules():
                if isinstance(m, MSDeformAttn):
                    m.reset_parameters()
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        p = self.cfg.prior_prob
        nn.init.constant_(self.class_embed.bias, -math.log((1 - p) / p))
        last = self.bbox_embed[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        nn.init.constant_(last.bias[2:], -2.0)

    def init_only_keys(self) -> list[str]:
        """Everything but the backbone: a file with none of these (an ImageNet ResNet) loads the backbone and
        leaves the rest at its initialisation; a detector's file must have them all."""
        return [k for k in self.state_dict() if not k.startswith("backbone.")]

    def levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The ``L`` projected maps ``(B, dim, H_l, W_l)``, strides 8, 16, 32, 64 with the default 4 levels."""
        feats = self.backbone.forward_pyramid(images, self.strides)
        maps = [proj(f) for proj, f in zip(self.input_proj, feats)]
        src = feats[-1]
        for proj in self.input_proj[len(feats):]:
            src = proj(src)
            maps.append(src)
        return maps

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The encoder's memory ``(B, S, dim)`` over all levels (``S = sum H_l W_l``) and the level shapes."""
        maps = self.levels(images)
        shapes = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
        B, d = images.shape[0], self.cfg.dim
        src = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        pos = torch.cat([sine_positions(h, w, d, images.device).to(src.dtype) + self.level_embed[lvl]
                         for lvl, (h, w) in enumerate(shapes)], 0)[None]
        # each pixel's own centre, the same normalised point on every level (valid ratios 1)
        centres = torch.cat([torch.stack(torch.meshgrid((torch.arange(w, device=src.device, dtype=src.dtype) + 0.5) / w,
                                                        (torch.arange(h, device=src.device, dtype=src.dtype) + 0.5) / h,
                                                        indexing="xy"), -1).reshape(h * w, 2)
                             for h, w in shapes], 0)
        ref = centres[None, :, None, :].expand(B, -1, len(shapes), 2)
        for layer in self.encoder:
            src = layer(src, pos, ref, shapes)
        return src, shapes

    def decode(self, memory: torch.Tensor, shapes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        """One ``{"logits" (B, Q, K), "boxes" (B, Q, 4)}`` per decoder layer."""
        B = memory.shape[0]
        query_pos, tgt = self.query_embed.weight.split(self.cfg.dim, dim=1)
        query_pos, tgt = query_pos[None].expand(B, -1, -1), tgt[None].expand(B, -1, -1)
        ref = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        ref_logit = inverse_sigmoid(ref)
        outs = []
        for layer in self.decoder:
            tgt = layer(tgt, query_pos, ref, memory, shapes)
            delta = self.bbox_embed(tgt)
            boxes = torch.cat([delta[..., :2] + ref_logit, delta[..., 2:]], -1).sigmoid()
            outs.append({"logits": self.class_embed(tgt), "boxes": boxes})
        return outs

    def forward(self, images: torch.Tensor) -> dict:
        outs = self.decode(*self.encode(images))
        return {**outs[-1], "aux": outs[:-1]}


@register_model("deformable_detr_r50", DeformableDETRConfig(),
                "Deformable DETR, ResNet-50, 6 + 6 layers, 500 queries (UTT's MOT detector, arXiv 2010.04159)")
@register_model("deformable_detr_r18", DeformableDETRConfig(backbone="resnet18_image"),
                "Deformable DETR, ResNet-18 (UTT's ablation backbone)")
@register_model("deformable_detr_r18_tiny",
                DeformableDETRConfig(backbone="resnet18_image", dim=64, heads=4, points=2, encoder_layers=2,
                                     decoder_layers=2, ffn_dim=128, dropout=0.0, num_queries=20),
                "Deformable DETR, ResNet-18, dim 64, 2 + 2 layers, 20 queries: a detector trainable on a CPU")
def build_deformable_detr(cfg: DeformableDETRConfig) -> DeformableDETR:
    return DeformableDETR(cfg)
