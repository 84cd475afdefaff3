"""Action detection on person boxes: the RoI head of every video backbone, and MeMViT's box Transformer.

The AVA head of SlowFast (Feichtenhofer et al., arXiv 1812.03982, Sec. 5.1), which MViTv2 (arXiv 2112.01526,
Sec. 6.3), MaskFeat (arXiv 2112.09133), MAE-ST (arXiv 2205.09113, Sec. 5) and MeMViT (arXiv 2201.08383,
Sec. 5 and its ``ResNetRoIHead``) all use on their backbone's last feature map:

    x (B, C, T', H', W') -> mean over T' -> RoIAlign(boxes, 7x7, sampling_ratio 0, aligned) -> max over 7x7
      -> (K, C) -> Dropout -> Linear(C, K_classes) -> sigmoid (at test; training uses BCE on the logits)

Transformers (MViTv2, MeMViT, ViT) give tokens ``(B, P + T'H'W', C)``: the prefix (CLS) is dropped and the
rest reshaped to the ``T' x H' x W'`` grid first (``backbone.token_grids``). The boxes are in input pixels;
the feature map's stride (32 for MViTv2 at 224 px, 16 for ViT-B/16) is read from the two sizes.

MeMViT adds one **box Transformer block** (release: ``MVIT.BOX_DEPTH``) between the RoI features and the
classifier: the (up to 100, zero-padded) box features of a clip attend to each other and to the box features
of earlier clips of the same video, which a cache holds like the backbone's memory (pre-projection, detached,
``gapN`` selection of :func:`~tubelet.models.memvit.memory_offsets`). Padded boxes, and boxes of another
video, are masked with ``-inf`` (the release attends to the zero padding; METHODS.md section 7 asks for the
mask for cross-video memory, and padding is masked for the same reason).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.models.layers.boxes import roi_align
from tubelet.models.layers.drop_path import DropPath
from tubelet.models.layers.mlp import Mlp
from tubelet.models.memvit import memory_offsets

__all__ = ["ActionDetector", "BoxMemoryBlock", "RoIHead", "feature_map"]


def feature_map(backbone: nn.Module, video: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The backbone's last feature map ``(B, C, T', H', W')`` for ``video (B, 3, T, H, W)``.

    CNNs give it directly (``forward_feature_map``); for Transformers the final (normed) tokens lose their
    prefix and are reshaped to the output grid. A model whose classifier normalises the pooled feature
    (``fc_norm``, MAE-ST's ViT) gets that LayerNorm on every token instead, so the boxes see normalised features.
    """
    if hasattr(backbone, "forward_feature_map"):
        return backbone.forward_feature_map(video)
    kw = {"video_ids": video_ids} if video_ids is not None and getattr(backbone, "uses_memory", False) else {}
    tokens = backbone.forward_features(video, **kw)
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    tokens = tokens[:, prefix:]
    fc_norm = getattr(backbone, "fc_norm", None)
    if isinstance(fc_norm, nn.LayerNorm):
        tokens = fc_norm(tokens)
    t, h, w = backbone.token_grids(*video.shape[-3:])[1]
    B, N, C = tokens.shape
    if N != t * h * w:
        raise ValueError(f"{type(backbone).__name__}: {N} tokens do not fill its {t}x{h}x{w} output grid")
    return tokens.transpose(1, 2).reshape(B, C, t, h, w)


class RoIHead(nn.Module):
    """``(B, C, T', H', W')`` and boxes ``(B, M, 4)`` (input pixels ``x1,y1,x2,y2``) -> box features
    ``(B, M, C)`` (temporal mean, RoIAlign ``resolution`` x ``resolution`` with adaptive sampling, spatial
    max); :meth:`classify` is Dropout and the Linear classifier on them."""

    def __init__(self, dim: int, num_classes: int, resolution: int = 7, dropout: float = 0.0,
                 aligned: bool = True, init_std: float = 0.01) -> None:
        super().__init__()
        self.resolution, self.aligned = int(resolution), bool(aligned)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(dim, num_classes)
        nn.init.normal_(self.proj.weight, std=init_std)  # SlowFast's head init (std 0.01, bias 0)
        nn.init.zeros_(self.proj.bias)

    def pool(self, fmap: torch.Tensor, boxes: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        B, C, _, Hf, Wf = fmap.shape
        M = boxes.shape[1]
        x = fmap.mean(dim=2)  # temporal pooling over the whole clip (AvgPool3d [T', 1, 1])
        scale = boxes.new_tensor([Wf / input_hw[1], Hf / input_hw[0]] * 2)
        rois = torch.cat([torch.arange(B, device=boxes.device, dtype=boxes.dtype).repeat_interleave(M)[:, None],
                          (boxes * scale).reshape(B * M, 4)], 1)
        r = roi_align(x, rois, self.resolution, spatial_scale=1.0, sampling_ratio=0, aligned=self.aligned)
        return r.amax(dim=(-2, -1)).view(B, M, C)  # MaxPool2d(resolution)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(feats))


class BoxMemoryBlock(nn.Module):
    """Pre-norm Transformer block over a clip's padded box features ``(B, M, C)`` whose keys and values also
    hold the box features of earlier clips (MeMViT's box block, ``is_box_attn``: no pooling, no relative
    positions, residual ``+ q``). ``mask (B, M)`` marks real boxes; ``video_ids (B,)`` the stream's video.

    The cache holds the normalised block inputs (pre-projection, as the backbone's memory does), detached,
    for ``(attn_max_len - 1) * gap + 1`` clips; memory entries selected by ``gap`` are read with the current
    ``W_K``, ``W_V``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 memory: bool = True, gap: int = 2, attn_max_len: int = 3,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"box block width {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads = dim, num_heads
        self.norm1, self.norm2 = norm_layer(dim), norm_layer(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.memory, self.gap, self.attn_max_len = bool(memory), int(gap), int(attn_max_len)
        self.cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.last_offsets: list[int] = []

    @property
    def cache_length(self) -> int:
        return (self.attn_max_len - 1) * self.gap + 1

    def clear_memory(self) -> None:
        self.cache = []

    def forward(self, x: torch.Tensor, mask: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, M, C = x.shape
        h = self.norm1(x)
        keys, masks = [h], [mask]
        self.last_offsets = []
        if self.memory:
            if self.cache and self.cache[-1][0].shape[0] != B:
                raise ValueError(f"box memory holds batches of {self.cache[-1][0].shape[0]} streams, got {B}: the "
                                 "batch size must stay constant while memory is held (clear_memory between runs)")
            offsets = memory_offsets(len(self.cache), self.gap, self.attn_max_len - 1)
            self.last_offsets = offsets
            mem_k, mem_m = [], []
            for off in offsets:  # oldest first
                hm, mm, ids = self.cache[-off]
                if video_ids is not None and ids is not None:
                    mm = mm & (ids.to(video_ids.device) == video_ids)[:, None]
                mem_k.append(hm)
                mem_m.append(mm)
            keys, masks = mem_k + keys, mem_m + masks
            self.cache.append((h.detach(), mask.detach(), None if video_ids is None else video_ids.detach()))
            self.cache = self.cache[-(self.cache_length - 1):] if self.cache_length > 1 else []
        kv = torch.cat(keys, 1)
        kmask = torch.cat(masks, 1)
        d = C // self.num_heads
        q = self.q(h).view(B, M, self.num_heads, d).transpose(1, 2)
        k = self.k(kv).view(B, -1, self.num_heads, d).transpose(1, 2)
        v = self.v(kv).view(B, -1, self.num_heads, d).transpose(1, 2)
        bias = torch.zeros(B, 1, 1, kv.shape[1], dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~kmask[:, None, None, :], float("-inf"))
        # a clip with no real box at all attends to nothing: keep it finite (its outputs are masked out anyway)
        bias = torch.where(kmask.any(1)[:, None, None, None], bias, torch.zeros_like(bias))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias) + q  # residual pooling (+ q)
        out = self.proj(out.transpose(1, 2).reshape(B, M, C))
        x = x + self.drop_path(out)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ActionDetector(nn.Module):
    """``forward(video (B,3,T,H,W), boxes (B,M,4), mask (B,M), video_ids=None) -> logits (B, M, K)``: the
    backbone's feature map, the RoI features, the box blocks (MeMViT), the classifier."""

    def __init__(self, backbone: nn.Module, head: RoIHead, box_blocks: nn.ModuleList | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.box_blocks = box_blocks if box_blocks is not None else nn.ModuleList()

    @property
    def uses_memory(self) -> bool:
        return bool(getattr(self.backbone, "uses_memory", False)) or any(b.memory for b in self.box_blocks)

    def clear_memory(self) -> None:
        if hasattr(self.backbone, "clear_memory"):
            self.backbone.clear_memory()
        for b in self.box_blocks:
            b.clear_memory()

    def forward(self, video: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor,
                video_ids: torch.Tensor | None = None) -> torch.Tensor:
        fmap = feature_map(self.backbone, video, video_ids)
        feats = self.head.pool(fmap, boxes.to(fmap.dtype), tuple(video.shape[-2:]))
        for blk in self.box_blocks:
            feats = blk(feats, mask, video_ids)
        return self.head.classify(feats)
