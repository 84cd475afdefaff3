"""Space-time Vision Transformer: the MAE-ST encoder (Feichtenhofer et al., arXiv 2205.09113).

A plain ViT (Dosovitskiy et al., arXiv 2010.11929, Eqs. 1-4) on 2x16x16 tubelets with global
space-time attention, pre-norm blocks (LayerNorm eps 1e-6), MLP ratio 4 and separable learned
space + time positions (MAE-ST Sec. 3, A.1). 16x224x224 gives 8x14x14 = 1568 tokens.
``forward_features(x, keep_idx)`` runs the encoder on a subset of tokens, as MAE's sparse encoder
does: positions are added first, then only the kept tokens (and the CLS token) enter the blocks.

Variants (width / depth / heads): tiny 192/12/3, small 384/12/6, base 768/12/12, large
1024/24/16, huge 1280/32/16; with 400 classes base has 86.7M, large 304M, huge 632M parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tubelet.errors import CheckpointError
from tubelet.models.heads import ClassifierHead, pool_tokens
from tubelet.models.layers import Attention, DropPath, Mlp, PatchEmbed3d, SeparablePosEmbed
from tubelet.models.layers.angular_attention import (
    AttentionChoice,
    LinearAngularAttention,
    attention_layer,
    refuse_castling_into_softmax,
    switch_to_inference,
    castling_only_keys,
)
from tubelet.models.base import BackboneConfig
from tubelet.models.registry import register_model

__all__ = ["Block", "ViTConfig", "VisionTransformer"]


@dataclass(frozen=True)
class ViTConfig(BackboneConfig, AttentionChoice):
    """One space-time ViT variant. ``img_size``/``num_frames`` only size the position tables at build
    time; other inputs work too (tables are interpolated). ``attention`` and ``castling_*``
    (``AttentionChoice``): softmax or Castling-ViT's linear-angular attention in every block."""

    patch_size: int = 16
    tubelet_size: int = 2
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # dropout after the attention and MLP output projections
    attn_drop_rate: float = 0.0
    pos_embed: str = "learned"  # "learned" | "sincos" (fixed); both separable space + time
    class_token: bool = True
    global_pool: str = "avg"  # "avg" (mean of patch tokens) | "token" (CLS)
    fc_norm: bool = False  # True: the final LayerNorm acts on the pooled feature instead of the tokens
    head_init_std: float = 0.02
    norm_eps: float = 1e-6
    fused_attn: bool = True  # F.scaled_dot_product_attention; False: explicit softmax(qk^T)v
    grad_checkpointing: bool = False  # recompute each block in backward (activation checkpointing)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DP(Attn(LN(x)))``, then ``x + DP(MLP(LN(x)))`` (ViT Eqs. 2-3)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        fused_attn: bool = True,
        attn_layer: Callable[..., nn.Module] = Attention,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads, qkv_bias, attn_drop, proj_drop, fused_attn)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        query_idx: torch.Tensor | None = None,
        grid: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        """``(B, N, D) -> (B, N, D)``; with ``query_idx (B, M)`` only those tokens' outputs, ``(B, M, D)``.
        ``grid``: the (T, H, W) grid of the patch tokens, for attention layers that need it."""
        if query_idx is None:
            x = x + self.drop_path1(self.attn(self.norm1(x), attn_mask, grid=grid))
        else:
            kept = torch.gather(x, 1, query_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, M, D)
            x = kept + self.drop_path1(self.attn(self.norm1(x), attn_mask, query_idx=query_idx, grid=grid))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def init_linear_and_norm(modules: Iterable[nn.Module]) -> None:
    """MAE's reference init of ``modules``' Linears (Xavier-uniform weights, zero biases) and LayerNorms
    (weight 1, bias 0): the ViT encoder's and the MAE-ST decoder's."""
    for m in modules:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of a ViT with another tubelet depth or token grid, made to fit ``model``: video <-> image
    transfer and other clip sizes.

    - ``patch_embed.proj.weight``: an image ViT's 2-D projection ``(D, C, p, p)`` or a one-frame
      tubelet is *inflated* to ``t`` frames by repeating it and dividing by ``t`` (I3D's inflation,
      arXiv 1705.07750 Sec. 2.3: a clip of one repeated frame gives the image model's embedding, and
      without a class token its logits too, since attention over duplicated keys averages the same); a
      video tubelet is *collapsed* to one frame by summing over time (the same identity read the other
      way). Other depth changes are refused: no rule keeps the response.
    - learned ``pos_embed.spatial`` / ``pos_embed.temporal`` of another grid are resampled to the
      model's (bicubic in space, linear in time, a one-step time table repeated), as the model itself
      does for other clip sizes.
    """
    from tubelet.models.layers.pos_embed import resample_separable

    refuse_castling_into_softmax(state, model)
    own = model.state_dict()
    out = dict(state)
    key = "patch_embed.proj.weight"
    w, target = state.get(key), own.get(key)
    if w is not None and target is not None and tuple(w.shape) != tuple(target.shape):
        src = w.unsqueeze(2) if w.ndim == 4 else w  # (D, C, t, p, p)
        t_src, t_dst = int(src.shape[2]), int(target.shape[2])
        if src.ndim == 5 and src.shape[:2] + src.shape[3:] == target.shape[:2] + target.shape[3:]:
            if t_src == 1:
                out[key] = src.repeat(1, 1, t_dst, 1, 1) / t_dst
            elif t_dst == 1:
                out[key] = src.sum(dim=2, keepdim=True)
            else:
                raise CheckpointError(f"{key}: a {t_src}-frame tubelet cannot become a {t_dst}-frame one; "
                                 "only image <-> video (1 <-> t frames) transfers keep the embedding")
    spatial, temporal = state.get("pos_embed.spatial"), state.get("pos_embed.temporal")
    own_s = own.get("pos_embed.spatial")
    if spatial is not None and temporal is not None and own_s is not None and (
            spatial.shape != own_s.shape or temporal.shape != own["pos_embed.temporal"].shape):
        out["pos_embed.spatial"], out["pos_embed.temporal"] = resample_separable(
            spatial, temporal, tuple(int(g) for g in model.pos_embed.grid_size))
    return out


class VisionTransformer(nn.Module):
    """Space-time ViT on tubelets, ``(B, C, T, H, W) -> logits (B, num_classes)``.

    Attributes follow the tubelet backbone contract: ``patch_embed``, ``pos_embed``, ``cls_token``
    (Parameter or None), ``blocks``, ``norm``, ``fc_norm``, ``head``, ``num_classes``, ``embed_dim``,
    ``num_prefix_tokens``. Weights of other tubelet depths and grids load through
    :func:`checkpoint_filter_fn` (video <-> image transfer).
    """

    checkpoint_filter_fn = staticmethod(checkpoint_filter_fn)

    # -- the Backbone contract (models/base.py) ------------------------------------------------------------
    @property
    def in_chans(self) -> int:
        return int(self.patch_embed.in_chans)

    @property
    def stem_dim(self) -> int:
        return int(self.embed_dim)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.patch_embed.patch_size)  # type: ignore[return-value]

    def token_grids(self, num_frames: int, height: int, width: int) -> tuple[tuple[int, int, int], ...]:
        g = tuple(int(v) for v in self.patch_embed.grid_size(num_frames, height, width))
        return g, g

    def __init__(self, cfg: ViTConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = dataclasses.replace(cfg or ViTConfig(), **overrides)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.embed_dim = cfg.embed_dim
        self.global_pool = cfg.global_pool
        self.num_prefix_tokens = 1 if cfg.class_token else 0
        self.grad_checkpointing = cfg.grad_checkpointing
        if cfg.global_pool not in ("avg", "token"):
            raise ValueError(f"global_pool must be 'avg' or 'token', got '{cfg.global_pool}'")
        if cfg.global_pool == "token" and not cfg.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        norm_layer = partial(nn.LayerNorm, eps=cfg.norm_eps)

        self.patch_embed = PatchEmbed3d((cfg.tubelet_size, cfg.patch_size, cfg.patch_size), cfg.in_chans, cfg.embed_dim)
        self.grid_size = self.patch_embed.grid_size(cfg.num_frames, cfg.img_size, cfg.img_size)
        self.pos_embed = SeparablePosEmbed(cfg.embed_dim, self.grid_size, cfg.pos_embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.class_token else None

        # Stochastic depth rises linearly from 0 (first block) to drop_path_rate (last block).
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        attn_layer = attention_layer(cfg, Attention, LinearAngularAttention)
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.qkv_bias,
                proj_drop=cfg.drop_rate,
                attn_drop=cfg.attn_drop_rate,
                drop_path=rates[i],
                norm_layer=norm_layer,
                fused_attn=cfg.fused_attn,
                attn_layer=attn_layer,
            )
            for i in range(cfg.depth)
        )
        self.norm = nn.Identity() if cfg.fc_norm else norm_layer(cfg.embed_dim)
        self.fc_norm = norm_layer(cfg.embed_dim) if cfg.fc_norm else nn.Identity()
        self.head = ClassifierHead(cfg.embed_dim, cfg.num_classes, cfg.head_dropout, cfg.head_init_std)
        self.init_weights()

    # ----------------------------------------------------------------------------------- setup
    def init_weights(self) -> None:
        """MAE's reference initialisation (He et al., arXiv 2111.06377, and mae_st's ``initialize_weights``),
        so MAE-ST pre-training starts where the paper's does: Xavier-uniform for every ``nn.Linear``
        weight (std ``sqrt(2 / (fan_in + fan_out))``), zero biases, LayerNorm weight 1 / bias 0; the
        tubelet projection initialised like a Linear (Xavier-uniform on its weight viewed as
        ``(D, C*pt*ph*pw)``); the CLS token normal(0.02). Learned positions keep
        ``SeparablePosEmbed``'s init and the classifier the head's own (``head_init_std``), as a
        fine-tuning head is re-initialised anyway.
        """
        init_linear_and_norm(self.modules())
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.head.init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def switch_to_inference(self) -> None:
        """Castling attention: remove the auxiliary softmax branch (refused while its weight is not 0)."""
        switch_to_inference(self)

    def init_only_keys(self) -> list[str]:
        """Tensors a softmax checkpoint of this family lacks (castling's value convs and branch weights): they keep their
        initialisation when a checkpoint has none of them (``methods/backbone.py``)."""
        return castling_only_keys(self)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay when fine-tuning (as mae_st's ``no_weight_decay``)."""
        names = {"cls_token"} if self.cls_token is not None else set()
        if self.pos_embed.kind == "learned":
            names |= {"pos_embed.spatial", "pos_embed.temporal"}
        return names

    def num_layers(self) -> int:
        return len(self.blocks)

    def get_layer_id(self, param_name: str) -> int:
        """Layer index for layer-wise LR decay: 0 embeddings, i+1 block i, depth+1 final norm/head."""
        if param_name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return len(self.blocks) + 1

    # --------------------------------------------------------------------------------- forward
    def embed(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tubelet tokens plus positions, no CLS: ``(B, C, T, H, W) -> (B, N, D)``.

        With ``keep_idx (B, K)`` only those tokens are embedded, ``-> (B, K, D)``; equal to gathering
        the full result, without projecting the dropped cubes.

        With ``token_mask (B, N)`` (1/True = masked) and ``mask_token (D,)``, masked embeddings are
        replaced before positions are added, ``x <- x (1 - m) + mask_token m`` (MaskFeat, BEiT), so a
        mask token still knows where it is.
        """
        grid = self.patch_embed.grid_size(*x.shape[-3:])
        if token_mask is not None:
            if keep_idx is not None or mask_token is None:
                raise ValueError("token_mask needs mask_token and cannot be combined with keep_idx")
            tokens = self.patch_embed(x)  # (B, N, D)
            m = token_mask.to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
            tokens = tokens * (1 - m) + mask_token.to(tokens.dtype).view(1, 1, -1) * m
            return self.pos_embed(tokens, grid)
        if keep_idx is None:
            return self.pos_embed(self.patch_embed(x), grid)
        n = grid[0] * grid[1] * grid[2]
        if keep_idx.ndim != 2 or keep_idx.shape[0] != x.shape[0] or keep_idx.dtype != torch.long:
            raise ValueError(
                f"keep_idx must be a LongTensor (B={x.shape[0]}, K) of token indices, got "
                f"{keep_idx.dtype} {tuple(keep_idx.shape)}"
            )
        # Range check on CPU only: on an accelerator it would force a device sync every step.
        checkable = keep_idx.device.type == "cpu" and keep_idx.numel() > 0
        if checkable and not (0 <= int(keep_idx.min()) and int(keep_idx.max()) < n):
            raise ValueError(f"keep_idx has indices outside [0, {n}) for a {grid} token grid")
        return self.pos_embed(self.patch_embed.forward_subset(x, keep_idx), grid, keep_idx)

    def forward_features(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoder tokens ``(B, N (+1 CLS), D)``, or ``(B, K (+1), D)`` for the kept tokens only.

        ``token_mask``/``mask_token``: masked-token replacement after the embedding (see ``embed``).
        """
        grid = tuple(int(g) for g in self.patch_embed.grid_size(*x.shape[-3:]))
        x = self.embed(x, keep_idx, token_mask, mask_token)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, grid=grid, use_reentrant=False) if use_ckpt else blk(x, grid=grid)
        return self.norm(x)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (mean of patch tokens, or CLS), optional fc_norm, then dropout + linear head."""
        x = self.fc_norm(pool_tokens(tokens, self.global_pool, self.num_prefix_tokens))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _variant(dim: int, depth: int, heads: int) -> ViTConfig:
    return ViTConfig(embed_dim=dim, depth=depth, num_heads=heads)


@register_model("vit_tiny", _variant(192, 12, 3), "space-time ViT-Ti/16, 2x16x16 tubelets")
@register_model("vit_small", _variant(384, 12, 6), "space-time ViT-S/16, 2x16x16 tubelets")
@register_model("vit_base", _variant(768, 12, 12), "space-time ViT-B/16, 2x16x16 tubelets (MAE-ST)")
@register_model("vit_large", _variant(1024, 24, 16), "space-time ViT-L/16, 2x16x16 tubelets (MAE-ST)")
@register_model("vit_huge", _variant(1280, 32, 16), "space-time ViT-H/16, 2x16x16 tubelets (MAE-ST)")
def build_vit(cfg: ViTConfig) -> VisionTransformer:
    return VisionTransformer(cfg)


def _image_variant(dim: int, depth: int, heads: int, patch: int) -> ViTConfig:
    # FLIP's image tower (arXiv 2212.00794, Sec. 3): fixed 2-D sin-cos positions, no CLS, average pooling;
    # an image is a one-frame clip (B, C, 1, H, W).
    return ViTConfig(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, tubelet_size=1, num_frames=1,
                     pos_embed="sincos", class_token=False, global_pool="avg", num_classes=0)


@register_model("vit_base_patch16_image", _image_variant(768, 12, 12, 16), "image ViT-B/16, sin-cos, no CLS (FLIP)")
@register_model("vit_large_patch16_image", _image_variant(1024, 24, 16, 16), "image ViT-L/16, sin-cos, no CLS (FLIP)")
@register_model("vit_huge_patch14_image", _image_variant(1280, 32, 16, 14), "image ViT-H/14, sin-cos, no CLS (FLIP)")
def build_image_vit(cfg: ViTConfig) -> VisionTransformer:
    return VisionTransformer(cfg)
