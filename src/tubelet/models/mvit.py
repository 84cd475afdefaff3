"""MViTv2: Improved Multiscale Vision Transformers (Li et al., arXiv 2112.01526, CVPR 2022).

Video models (Kinetics configs of PySlowFast, ported by torchvision as ``mvit_v2_s``) and image models
(the ImageNet configs of the MViTv2 release). Four stages; the first block of stages 2-4 is a
*transition*: it pools queries with stride (1, 2, 2) and doubles width and heads inside attention
(``dim_mul_in_att``), so head_dim stays constant. Every block uses pooling attention with decomposed
relative positions and residual pooling (``layers/pool_attention.py``); K/V are pooled with an adaptive
stride that starts at (1, 8, 8) (images: (4, 4)) and is divided by each query stride (Sec. 3, Table 1).

Shapes: video input ``(B, 3, T, H, W)`` (image models ``(B, 3, H, W)``); tokens ``(B, 1 + T'H'W', D)``,
time slowest, CLS at index 0. Any input size works: the token grid is read from the input and the
relative-position tables are linearly interpolated when it differs from the build-time grid.

Registry names: ``mvitv2_s``, ``mvitv2_b``, ``mvitv2_l`` (video, Kinetics-400 heads) and
``mvitv2_t_img``, ``mvitv2_s_img``, ``mvitv2_b_img``, ``mvitv2_l_img`` (ImageNet-1K heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tubelet.models.layers.angular_attention import (
    AttentionChoice,
    CastlingPoolingAttention,
    attention_layer,
    refuse_castling_into_softmax,
    switch_to_inference,
    castling_only_keys,
)
from tubelet.models.layers.drop_path import DropPath
from tubelet.models.layers.mlp import Mlp
from tubelet.models.layers.pool_attention import Grid, PoolingAttention, conv_out_size, pool_grid, pool_tokens
from tubelet.models.layers.rel_pos import interpolate_rel_pos
from tubelet.models.base import BackboneConfig
from tubelet.models.registry import register_model

HEAD_POOLS = ("cls", "mean", "mean_norm")


@dataclass(frozen=True)
class MViTConfig(BackboneConfig, AttentionChoice):
    """One MViTv2 variant. Defaults are MViTv2-S 16x4 (Kinetics-400) as in PySlowFast's config.
    ``attention`` and ``castling_*`` (``AttentionChoice``): softmax pooling attention or Castling-ViT's
    linear-angular form of it in every block."""

    depth: int = 16
    embed_dim: int = 96  # stage-1 width
    num_heads: int = 1  # stage-1 heads
    transitions: tuple[int, ...] = (1, 3, 14)  # first blocks of stages 2-4: q stride, width and heads x2
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dim_mul_in_att: bool = True  # width doubles in the transition's attention (v2); False: in the MLP before
    video: bool = True  # False: image model (Conv2d stem, 2-D pooling, no temporal term)
    patch_kernel: tuple[int, int, int] = (3, 7, 7)
    patch_stride: tuple[int, int, int] = (2, 4, 4)
    patch_padding: tuple[int, int, int] = (1, 3, 3)
    pool_kernel: tuple[int, int, int] = (3, 3, 3)
    q_stride: tuple[int, int, int] = (1, 2, 2)  # at transitions
    kv_stride: tuple[int, int, int] = (1, 8, 8)  # adaptive K/V stride of block 0
    q_stride_last_stage: bool = True  # False keeps stage 3's grid in stage 4 (MaskFeat pre-training)
    rel_pos_spatial: bool = True
    rel_pos_temporal: bool = True
    residual_pooling: bool = True
    # MViTv1 (Fan et al., arXiv 2104.11227): learned separable absolute positions (spatial, temporal, CLS) added after
    # the stem, and query pooling only in the blocks with a query stride (v2 pools Q in every block).
    abs_pos_embed: bool = False
    q_pool_every_block: bool = True
    cls_token: bool = True
    head_pool: str = "cls"  # cls | mean (norm, then mean) | mean_norm (mean of patch tokens, then norm)
    drop_path_rate: float = 0.2
    head_dropout: float = 0.5
    norm_eps: float = 1e-6
    # LayerNorms inside attention (after the Q/K/V pooling convs); None: norm_eps. The MViTv1 checkpoints were
    # trained with them at nn.LayerNorm's default 1e-5 (PySlowFast's 2021 code, PyTorchVideo's port) while the
    # other norms use 1e-6; their imports set 1e-5 (models/convert/mvit_v1.py).
    attn_norm_eps: float | None = None
    grad_checkpointing: bool = False
    attn_impl: str = "auto"  # auto | mask | concat | math (layers/pool_attention.py)


@dataclass(frozen=True)
class BlockSpec:
    """Derived per-block layout (what the reference code computes from DIM_MUL, HEAD_MUL and strides)."""

    dim: int
    dim_out: int
    num_heads: int
    q_stride: Grid
    kv_stride: Grid
    input_grid: Grid  # build-time grid entering the block


def _triple(v) -> Grid:
    v = tuple(int(x) for x in v)
    return v if len(v) == 3 else (1,) + v  # type: ignore[return-value]


def stem_grid(cfg: MViTConfig, num_frames: int, height: int, width: int) -> Grid:
    """Token grid after the patch embedding (true conv output sizes)."""
    k, s, p = _triple(cfg.patch_kernel), _triple(cfg.patch_stride), _triple(cfg.patch_padding)
    t = conv_out_size(num_frames, k[0], s[0], p[0]) if cfg.video else 1
    return (t, conv_out_size(height, k[1], s[1], p[1]), conv_out_size(width, k[2], s[2], p[2]))


def block_specs(
    cfg: MViTConfig, num_frames: int | None = None, img_size: int | tuple[int, int] | None = None
) -> list[BlockSpec]:
    """Per-block widths, heads, strides and input grids for an input of the given size (default: build size)."""
    num_frames = cfg.num_frames if num_frames is None else num_frames
    size = cfg.img_size if img_size is None else img_size
    h, w = (size, size) if isinstance(size, int) else size
    grid = stem_grid(cfg, num_frames, h, w)
    kernel = _triple(cfg.pool_kernel)
    q_stride_t = _triple(cfg.q_stride)
    kv = _triple(cfg.kv_stride)
    transitions = sorted(cfg.transitions)
    n_before = lambda i: sum(t <= i for t in transitions)  # noqa: E731 - transitions at or before block i
    specs: list[BlockSpec] = []
    dim = cfg.embed_dim
    for i in range(cfg.depth):
        heads = cfg.num_heads * 2 ** n_before(i)
        if cfg.dim_mul_in_att:
            dim_out = cfg.embed_dim * 2 ** n_before(i)
        else:
            dim_out = cfg.embed_dim * 2 ** n_before(i + 1)
        is_transition = i in transitions
        if is_transition and (cfg.q_stride_last_stage or i != transitions[-1]):
            q_stride = q_stride_t
        else:
            q_stride = (1, 1, 1)
        kv = tuple(max(a // b, 1) for a, b in zip(kv, q_stride))  # type: ignore[assignment]
        specs.append(BlockSpec(dim, dim_out, heads, q_stride, kv, grid))  # type: ignore[arg-type]
        grid = pool_grid(grid, kernel, q_stride)
        dim = dim_out
    return specs


class PatchEmbed(nn.Module):
    """Convolutional stem: ``(B, C, T, H, W) -> (B, T'H'W', D)`` (Conv2d for image models)."""

    def __init__(self, cfg: MViTConfig) -> None:
        super().__init__()
        k, s, p = _triple(cfg.patch_kernel), _triple(cfg.patch_stride), _triple(cfg.patch_padding)
        self.video = cfg.video
        if cfg.video:
            self.proj: nn.Module = nn.Conv3d(cfg.in_chans, cfg.embed_dim, k, stride=s, padding=p)
        else:
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, k[1:], stride=s[1:], padding=p[1:])
        self.patch_size = s

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        if self.video and x.ndim == 4:
            x = x.unsqueeze(2)  # an image is a one-frame clip
        if not self.video and x.ndim == 5:
            if x.shape[2] != 1:
                raise ValueError(f"image MViT takes (B, C, H, W) or one-frame clips, got {tuple(x.shape)}")
            x = x.squeeze(2)
        x = self.proj(x)
        grid: Grid = (x.shape[2], x.shape[3], x.shape[4]) if self.video else (1, x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class MultiScaleBlock(nn.Module):
    """``y = S(x) + DropPath(Attn(LN1 x)); out = y' + DropPath(MLP(LN2 y))`` (Sec. 3, METHODS.md step 6).

    S pools the shortcut with MaxPool(kernel stride+1, stride) at a query stride; the width change is a
    Linear on the *normalised* input (v2, ``dim_mul_in_att``), or on LN2's output when the MLP widens.
    """

    def __init__(
        self,
        spec: BlockSpec,
        cfg: MViTConfig,
        drop_path: float,
        norm_layer,
        attn_layer: Callable[..., nn.Module] = PoolingAttention,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = spec.dim, spec.dim_out
        self.dim_mul_in_att = cfg.dim_mul_in_att
        self.num_prefix = 1 if cfg.cls_token else 0
        self.spatial_only = not cfg.video
        att_dim = spec.dim_out if cfg.dim_mul_in_att else spec.dim
        self.norm1 = norm_layer(spec.dim)
        self.attn = attn_layer(
            spec.dim,
            att_dim,
            spec.num_heads,
            input_grid=spec.input_grid,
            kernel=_triple(cfg.pool_kernel),
            q_stride=spec.q_stride,
            kv_stride=spec.kv_stride,
            qkv_bias=cfg.qkv_bias,
            rel_pos_spatial=cfg.rel_pos_spatial,
            rel_pos_temporal=cfg.rel_pos_temporal,
            residual_pooling=cfg.residual_pooling,
            # only when set, so that attention layers without the switch (MeMViT's) keep their signature
            **({} if cfg.q_pool_every_block else {"q_pool_unstrided": False}),
            num_prefix=self.num_prefix,
            spatial_only=self.spatial_only,
            norm_layer=norm_layer if cfg.attn_norm_eps is None else partial(nn.LayerNorm, eps=cfg.attn_norm_eps),
            attn_impl=cfg.attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(att_dim)
        self.mlp = Mlp(att_dim, int(att_dim * cfg.mlp_ratio), spec.dim_out)
        self.proj = nn.Linear(spec.dim, spec.dim_out) if spec.dim != spec.dim_out else None
        self.pool_skip: nn.Module | None = None
        if max(spec.q_stride) > 1:
            kernel = [s + 1 if s > 1 else s for s in spec.q_stride]
            pad = [k // 2 for k in kernel]
            if self.spatial_only:
                self.pool_skip = nn.MaxPool2d(kernel[1:], spec.q_stride[1:], pad[1:])
            else:
                self.pool_skip = nn.MaxPool3d(kernel, spec.q_stride, pad)

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        x_norm = self.norm1(x)
        x_attn, q_grid = self.attn(x_norm, grid)
        if self.proj is not None and self.dim_mul_in_att:
            x = self.proj(x_norm)
        x_res, _ = pool_tokens(x, self.pool_skip, grid, self.num_prefix, self.spatial_only)
        x = x_res + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if self.proj is not None and not self.dim_mul_in_att:
            x = self.proj(x_norm)
        return x + self.drop_path(x_mlp), q_grid


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample relative-position tables whose length follows another token grid (e.g. MaskFeat
    pre-trains without the last stage's query stride) linearly to the model's, as the reference does."""
    refuse_castling_into_softmax(state, model)
    own = model.state_dict()
    out = dict(state)
    for k, v in state.items():
        if (k.rsplit(".", 1)[-1] in ("rel_pos_h", "rel_pos_w", "rel_pos_t") and k in own and v.ndim == 2
                and own[k].ndim == 2 and v.shape[1] == own[k].shape[1] and v.shape[0] != own[k].shape[0]):
            out[k] = interpolate_rel_pos(v.float(), own[k].shape[0]).to(v.dtype)
    return out


class MViT(nn.Module):
    """MViTv2 backbone with a linear head (timm-style ``forward_features`` / ``forward_head``)."""

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    def __init__(self, cfg: MViTConfig) -> None:
        super().__init__()
        if cfg.head_pool not in HEAD_POOLS:
            raise ValueError(f"head_pool must be one of {HEAD_POOLS}, got '{cfg.head_pool}'")
        if cfg.head_pool == "cls" and not cfg.cls_token:
            raise ValueError("head_pool='cls' needs cls_token=True")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = 1 if cfg.cls_token else 0
        self.grad_checkpointing = cfg.grad_checkpointing
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)

        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        self.pos_grid: Grid | None = None
        if cfg.abs_pos_embed:
            g = stem_grid(cfg, cfg.num_frames, cfg.img_size, cfg.img_size)
            self.pos_grid = g
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, g[1] * g[2], cfg.embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, g[0], cfg.embed_dim))
            self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.cls_token else None
        self.specs = block_specs(cfg)
        # Linear rise from 0 to the configured rate (plain floats: the model may be built on the meta device).
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            MultiScaleBlock(s, cfg, dpr[i], norm_layer, self.block_attention(i)) for i, s in enumerate(self.specs))
        self.embed_dim = self.specs[-1].dim_out
        self.norm = norm_layer(self.embed_dim)
        self.head_drop = nn.Dropout(cfg.head_dropout)
        self.head = nn.Linear(self.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self._init_weights()

    def block_attention(self, index: int) -> Callable[..., nn.Module]:
        """The attention class of block ``index``, chosen once from the config (a family built on MViTv2, such
        as MeMViT, overrides it to put its own layer into some blocks)."""
        return attention_layer(self.cfg, PoolingAttention, CastlingPoolingAttention)

    def _init_weights(self) -> None:
        # torchvision's port: trunc-normal(0.02) linears with zero bias, unit LayerNorms; relative tables
        # are trunc-normal at construction; convs keep PyTorch's default init.
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.pos_grid is not None:
            for p in (self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class):
                if p is not None:
                    nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- helpers for optimisers and methods -------------------------------------------------------------
    def num_layers(self) -> int:
        return len(self.blocks)

    def get_layer_id(self, param_name: str) -> int:
        """0: stem and CLS; i + 1: block i; depth + 1: final norm and head (layer-wise LR decay)."""
        if param_name.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return len(self.blocks) + 1

    def no_weight_decay(self) -> set[str]:
        # PySlowFast's MViTv2 configs decay CLS and relative tables (ZERO_DECAY_POS_CLS: False); 1-D
        # parameters are excluded by the optimiser anyway.
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def switch_to_inference(self) -> None:
        """Castling attention: remove the auxiliary softmax branch (refused while its weight is not 0)."""
        switch_to_inference(self)

    def init_only_keys(self) -> list[str]:
        """Tensors a softmax checkpoint of this family lacks (castling's value convs and branch weights): they keep their
        initialisation when a checkpoint has none of them (``methods/backbone.py``)."""
        return castling_only_keys(self)

    # -- the Backbone contract (models/base.py) ------------------------------------------------------------
    @property
    def in_chans(self) -> int:
        return int(self.cfg.in_chans)

    @property
    def stem_dim(self) -> int:
        return int(self.cfg.embed_dim)

    @property
    def patch_size(self) -> Grid:
        return tuple(int(p) for p in self.patch_embed.patch_size)  # type: ignore[return-value]

    def token_grids(self, num_frames: int, height: int, width: int) -> tuple[Grid, Grid]:
        grids = self.grid_sizes(num_frames, height, width)
        return tuple(grids[0]), tuple(grids[-1])  # type: ignore[return-value]

    def grid_sizes(self, num_frames: int, height: int, width: int) -> list[Grid]:
        """Token grid entering each block and (last entry) leaving the final block, for an input size."""
        specs = block_specs(self.cfg, num_frames, (height, width))
        last = pool_grid(specs[-1].input_grid, _triple(self.cfg.pool_kernel), specs[-1].q_stride)
        return [s.input_grid for s in specs] + [last]

    # -- forward ------------------------------------------------------------------------------------------
    def embed(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Grid]:
        """Patch tokens ``(B, T'H'W', D)`` (no CLS; v2 has no absolute positions) and their grid.

        With ``token_mask (B, T'H'W')`` (1/True = masked, on the stem grid) and ``mask_token (D,)``,
        masked tokens are replaced, ``x <- x (1 - m) + mask_token m`` (MaskFeat pre-training).
        """
        x, grid = self.patch_embed(x)
        if token_mask is not None:
            if mask_token is None:
                raise ValueError("token_mask needs a mask_token")
            m = token_mask.to(x.dtype).unsqueeze(-1)
            x = x * (1 - m) + mask_token.to(x.dtype).view(1, 1, -1) * m
        if self.pos_grid is not None:
            x = x + self.abs_positions(grid)
        return x, grid

    def abs_positions(self, grid: Grid) -> torch.Tensor:
        """MViTv1's separable positions for the patch tokens, ``(1, T'H'W', D)``: token ``(t, s)`` gets
        ``pos_temporal[t] + pos_spatial[s]`` (MViTv1, arXiv 2104.11227, Sec. 3.2 / Table 3). The tables
        are sized for the build-time grid; another grid is an error, not a silent resample."""
        if tuple(grid) != tuple(self.pos_grid):  # type: ignore[arg-type]
            raise ValueError(
                f"MViT with abs_pos_embed was built for a {self.pos_grid} token grid (num_frames={self.cfg.num_frames}, "
                f"img_size={self.cfg.img_size}); this input gives {tuple(grid)}: build it for this input size")
        t, hw = self.pos_embed_temporal.shape[1], self.pos_embed_spatial.shape[1]
        pos = self.pos_embed_temporal.unsqueeze(2) + self.pos_embed_spatial.unsqueeze(1)  # (1, T', H'W', D)
        return pos.reshape(1, t * hw, -1)

    def forward_blocks(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """Run the blocks on tokens (CLS included when the model has one); no final norm."""
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, grid = checkpoint(blk, x, grid, use_reentrant=False)
            else:
                x, grid = blk(x, grid)
        return x, grid

    def forward_features(
        self,
        x: torch.Tensor,
        return_grid: bool = False,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ):
        """``(B, C, T, H, W) -> (B, 1 + T'H'W', D)`` final tokens (normed unless ``head_pool='mean_norm'``).

        ``token_mask``/``mask_token``: masked-token replacement after the stem (see ``embed``).
        """
        x, grid = self.embed(x, token_mask, mask_token)
        if self.cls_token is not None:
            pos_cls = getattr(self, "pos_embed_class", None)
            cls = self.cls_token if pos_cls is None else self.cls_token + pos_cls
            x = torch.cat((cls.expand(x.shape[0], -1, -1), x), dim=1)
        x, grid = self.forward_blocks(x, grid)
        if self.cfg.head_pool != "mean_norm":
            x = self.norm(x)
        return (x, grid) if return_grid else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.cfg.head_pool == "cls":
            x = x[:, 0]
        elif self.cfg.head_pool == "mean":
            x = x[:, self.num_prefix_tokens :].mean(1)
        else:
            x = self.norm(x[:, self.num_prefix_tokens :].mean(1))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_mvit(cfg: MViTConfig) -> MViT:
    return MViT(cfg)


# -- registered variants (video: PySlowFast Kinetics configs; image: the MViTv2 ImageNet release) ------------
_VIDEO = dict(video=True, num_classes=400, head_pool="cls", cls_token=True)
_IMAGE = dict(
    video=False,
    num_classes=1000,
    num_frames=1,
    patch_kernel=(1, 7, 7),
    patch_stride=(1, 4, 4),
    patch_padding=(0, 3, 3),
    pool_kernel=(1, 3, 3),
    kv_stride=(1, 4, 4),
    rel_pos_temporal=False,
    cls_token=False,
    head_pool="mean",
    head_dropout=0.0,
)

MVITV2_S = MViTConfig(depth=16, embed_dim=96, num_heads=1, transitions=(1, 3, 14), drop_path_rate=0.2, **_VIDEO)
MVITV2_B = MViTConfig(
    depth=24, embed_dim=96, num_heads=1, transitions=(2, 5, 21), drop_path_rate=0.3, num_frames=32, **_VIDEO
)
MVITV2_L = MViTConfig(
    depth=48, embed_dim=144, num_heads=2, transitions=(2, 8, 44), drop_path_rate=0.75, num_frames=40, img_size=312,
    **_VIDEO,
)
MVITV2_T_IMG = MViTConfig(depth=10, embed_dim=96, num_heads=1, transitions=(1, 3, 8), drop_path_rate=0.1, **_IMAGE)
MVITV2_S_IMG = MViTConfig(depth=16, embed_dim=96, num_heads=1, transitions=(1, 3, 14), drop_path_rate=0.1, **_IMAGE)
MVITV2_B_IMG = MViTConfig(depth=24, embed_dim=96, num_heads=1, transitions=(2, 5, 21), drop_path_rate=0.3, **_IMAGE)
# The released L image config widens in the MLP of the block before each transition (DIM_MUL_IN_ATT: False).
MVITV2_L_IMG = MViTConfig(
    depth=48, embed_dim=144, num_heads=2, transitions=(2, 8, 44), drop_path_rate=0.5, dim_mul_in_att=False, **_IMAGE
)

register_model("mvitv2_s", MVITV2_S, "MViTv2-S 16x4, Kinetics-400 (arXiv 2112.01526)")(build_mvit)
register_model("mvitv2_b", MVITV2_B, "MViTv2-B 32x3, Kinetics-400 (arXiv 2112.01526)")(build_mvit)
register_model("mvitv2_l", MVITV2_L, "MViTv2-L 40x3 at 312, Kinetics-400 (arXiv 2112.01526)")(build_mvit)
register_model("mvitv2_t_img", MVITV2_T_IMG, "MViTv2-T, ImageNet-1K (arXiv 2112.01526)")(build_mvit)
register_model("mvitv2_s_img", MVITV2_S_IMG, "MViTv2-S, ImageNet-1K (arXiv 2112.01526)")(build_mvit)
register_model("mvitv2_b_img", MVITV2_B_IMG, "MViTv2-B, ImageNet-1K (arXiv 2112.01526)")(build_mvit)
register_model("mvitv2_l_img", MVITV2_L_IMG, "MViTv2-L, ImageNet-1K (arXiv 2112.01526)")(build_mvit)

# MViTv1-B (Fan et al., arXiv 2104.11227, Table 3; PySlowFast configs/Kinetics/MVIT_B_{16x4,32x3}_CONV):
# the width doubles in the MLP of the block before each transition, Q is pooled only at the query
# strides, learned separable absolute positions, neither relative positions nor residual pooling.
_V1 = dict(
    dim_mul_in_att=False, rel_pos_spatial=False, rel_pos_temporal=False, residual_pooling=False,
    abs_pos_embed=True, q_pool_every_block=False, **_VIDEO,
)
MVITV1_B_16X4 = MViTConfig(depth=16, embed_dim=96, num_heads=1, transitions=(1, 3, 14), drop_path_rate=0.2,
                           num_frames=16, **_V1)
MVITV1_B_32X3 = MViTConfig(depth=16, embed_dim=96, num_heads=1, transitions=(1, 3, 14), drop_path_rate=0.3,
                           num_frames=32, **_V1)
register_model("mvitv1_b_16x4", MVITV1_B_16X4, "MViTv1-B 16x4, Kinetics-400 (arXiv 2104.11227)")(build_mvit)
register_model("mvitv1_b_32x3", MVITV1_B_32X3, "MViTv1-B 32x3, Kinetics-400 (arXiv 2104.11227)")(build_mvit)
