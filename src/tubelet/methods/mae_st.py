"""MAE-ST: Masked Autoencoders As Spatiotemporal Learners (Feichtenhofer et al., arXiv 2205.09113).

A clip is cut into 2x16x16 tubelets (16x224x224 -> 8x14x14 = N = 1568 tokens); a random 90% of them
is removed (``tubelet.data.masking``); the space-time ViT encodes only the K = 156 visible tokens; a
small decoder (4 blocks x 512) fills the removed positions with a learned mask token and predicts their
pixels; the loss is the mean squared error on the removed tokens only (Sec. 3).

Layout in the style of MAE's reference ``models_mae.py``: ``forward_encoder`` -> ``forward_decoder``
-> ``forward_loss``, with ``patchify`` / ``unpatchify`` for the pixel targets.

Decisions (METHODS.md §2):

* **Target frame.** The paper predicts "one time slice" of each 2x16x16 cube (768 values). We use the
  *first* frame of each cube (frames 0, 2, ..., 14), as SlowFast does. mae_st's ``linspace`` index
  picks 0, 2, ..., 12, 15 (an off-by-one in its last slice); we follow the paper's intent, not that.
  ``target_frames="cube"`` predicts the whole cube (1536 values) instead.
* **Target pixels.** As the reference does, targets are taken from the *normalised* input clip (the
  tensor the encoder sees). With ``norm_pix_loss`` each target patch is then standardised,
  ``(y - mean) / sqrt(var + 1e-6)`` with the unbiased variance over its values, which removes any
  per-clip affine normalisation anyway (exactly so when all channels share mean/std, as Kinetics' 0.45
  / 0.225 do).
* **CLS.** The encoder's CLS output (if the backbone has one) is dropped before decoding; the decoder
  works on the N patch positions only.
* **Repeated sampling.** A batch ``(B, r, C, T, H, W)`` is flattened to ``B*r`` clips, each with its own
  mask. The LR rule counts videos (B), not clips (engine/optim.py).

Efficiency: masked tokens never enter the encoder (``forward_features(x, keep_idx)`` embeds and runs
only the kept tubelets); targets are gathered only for the removed tokens, straight from a strided
view of the clip without a full patchified copy. The decoder's last block, norm and prediction layer
run only on the removed tokens (the visible ones are not scored; every token is still a key in that
block's attention), which gives the same loss and gradients as predicting all N and discarding the
visible ones, as MAE's reference code does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from tubelet.config.bounds import NONNEGATIVE, POSITIVE, UNIT_OPEN, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.data.masking import TokenMask, mask_tokens
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.models.layers.pos_embed import SeparablePosEmbed
from tubelet.models.vit import Block, init_linear_and_norm

NORM_PIX_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# patchify / unpatchify: a patch's values are flattened in (C, pt, ph, pw) order, the order of the
# Conv3d patch-embedding weight. MSE and per-patch normalisation do not depend on the order as long as
# prediction and target share it.
# --------------------------------------------------------------------------------------------------


@dataclass
class MAESTConfig(MethodConfig):
    """The ``method`` section of MAE-ST pre-training."""

    name: str = "mae_st"
    mask_ratio: float = bounded(0.9, UNIT_OPEN)  # 0 would leave nothing to reconstruct, 1 nothing to see
    mask_type: Literal["random", "tube", "frame", "cube"] = "random"
    decoder_dim: int = bounded(512, POSITIVE)
    decoder_depth: int = bounded(4, NONNEGATIVE)  # 0: the prediction layer right after the encoder
    decoder_heads: int = bounded(8, POSITIVE)  # SlowFast's MAE decoder; mae_st uses 16 (same FLOPs, slower attention on CPU)
    mask_block: list[int] = bounded([2, 2, 2], POSITIVE, length=3)  # cube masking: (t, h, w) tokens
    norm_pix_loss: bool = True
    target_frames: Literal["first", "cube"] = "first"  # see MAEST.__init__

    def _cross_rules(self):
        if self.decoder_dim % self.decoder_heads:
            yield ("decoder_heads", self.decoder_heads,
                   f"a divisor of {{prefix}}decoder_dim ({self.decoder_dim}): each head takes an equal share")


def _cube_view(video: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, T', H', W', C, pt, ph, pw), a view (no copy)."""
    B, C, T, H, W = video.shape
    pt, ph, pw = patch_size
    if T % pt or H % ph or W % pw:
        raise ValueError(f"clip {T}x{H}x{W} is not divisible by the tubelet {pt}x{ph}x{pw}")
    v = video.view(B, C, T // pt, pt, H // ph, ph, W // pw, pw)
    return v.permute(0, 2, 4, 6, 1, 3, 5, 7)


def patchify(
    video: torch.Tensor, patch_size: Sequence[int], idx: torch.Tensor | None = None, frames: str = "cube"
) -> torch.Tensor:
    """Tubelet pixels per token.

    video: (B, C, T, H, W); idx: optional (B, M) token indices (time-slowest order).
    frames="cube":  -> (B, N or M, C*pt*ph*pw)   all frames of each cube (1536 values for 3x2x16x16)
    frames="first": -> (B, N or M, C*ph*pw)      the first frame of each cube (768 values)
    """
    v = _cube_view(video, patch_size)  # (B, T', H', W', C, pt, ph, pw)
    if frames == "first":
        # (B, T', H', W', C, ph, pw): frames 0, 2, ..., 14 for pt = 2, T = 16 (the paper / SlowFast).
        # mae_st's torch.linspace(0, T-1, T') index gives 0, 2, ..., 12, 15 (off by one at the end).
        v = v[:, :, :, :, :, 0]
    elif frames != "cube":
        raise ValueError(f"frames must be 'first' or 'cube', got '{frames}'")
    B, t, h, w = v.shape[:4]
    if idx is None:
        return v.reshape(B, t * h * w, -1)
    # Advanced indexing on the strided view copies only the M selected patches.
    ti, hi, wi = idx // (h * w), (idx // w) % h, idx % w  # each (B, M)
    b = torch.arange(B, device=idx.device).unsqueeze(1)  # (B, 1)
    return v[b, ti, hi, wi].reshape(B, idx.shape[1], -1)  # (B, M, P)


def unpatchify(patches: torch.Tensor, patch_size: Sequence[int], grid: Sequence[int], channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify`` (all tokens): (B, N, C*pt*ph*pw) -> (B, C, T'*pt, H'*ph, W'*pw).

    For ``frames="first"`` patches pass ``patch_size = (1, ph, pw)``: the result has one frame per cube.
    """
    B = patches.shape[0]
    pt, ph, pw = patch_size
    t, h, w = grid
    x = patches.reshape(B, t, h, w, channels, pt, ph, pw)
    x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T', pt, H', ph, W', pw)
    return x.reshape(B, channels, t * pt, h * ph, w * pw)


def normalize_patches(target: torch.Tensor, eps: float = NORM_PIX_EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch standardisation ``(y - mean) / sqrt(var + eps)`` over the last dim (unbiased var).

    Returns ``(normalised, mean, var)``; mean/var ``(..., 1)`` un-normalise predictions for display.
    """
    mean = target.mean(dim=-1, keepdim=True)
    centred = target - mean
    # Two-pass variance from the centred values (unbiased, as mae_st): the same value as
    # ``target.var(-1)``, which on CPU runs a scalar Welford loop about 7x slower than these passes.
    var = (centred * centred).sum(dim=-1, keepdim=True) / (target.shape[-1] - 1)
    return centred.div_((var + eps).sqrt_()), mean, var


# --------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------


class MAEST(nn.Module):
    """Masked autoencoder on space-time tubelets (arXiv 2205.09113, Sec. 3, Fig. 1).

    ``backbone``: the space-time ViT (``tubelet.models.vit``), used as the encoder on kept tokens only.
    ``grid``: the token grid (T', H', W') the decoder's position tables are built for (they are
    interpolated for other clip sizes, like the encoder's).
    """

    def __init__(self, backbone: nn.Module, cfg: MAESTConfig, grid: Sequence[int]) -> None:
        super().__init__()
        # The loss is over removed tokens only (Sec. 3): a ratio of 0 leaves nothing to reconstruct, 1
        # nothing to encode.
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method.mask_ratio must be in (0, 1) (exclusive; the paper uses 0.9), got "
                              f"{cfg.mask_ratio}")
        if cfg.target_frames not in ("first", "cube"):
            raise ConfigError(f"method.target_frames must be 'first' or 'cube', got '{cfg.target_frames}'")
        self.backbone = backbone
        self.cfg = cfg
        self.mask_ratio = cfg.mask_ratio
        self.patch_size = tuple(backbone.patch_size)
        self.in_chans = backbone.in_chans
        pt, ph, pw = self.patch_size
        self.target_patch = (1, ph, pw) if cfg.target_frames == "first" else (pt, ph, pw)
        target_dim = self.in_chans * math.prod(self.target_patch)  # 768 (first) or 1536 (cube)

        # Decoder (Sec. 3 "Decoder": 512 wide, 4 deep). The paper gives no head count; SlowFast uses 8,
        # mae_st 16. 8 is the default: the same parameters and FLOPs, and CPU attention runs heads of
        # width 64 about 12% faster than width 32 (a 5% shorter step at 90% masking).
        embed_dim = backbone.embed_dim
        dd = cfg.decoder_dim
        self.decoder_embed = nn.Linear(embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = SeparablePosEmbed(dd, tuple(grid), kind="learned")
        self.decoder_blocks = nn.ModuleList(
            [Block(dd, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, target_dim)
        self._init_decoder()

    def _init_decoder(self) -> None:
        # MAE's init: xavier-uniform Linear weights, zero biases, normal(0.02) mask token.
        torch.nn.init.normal_(self.mask_token, std=0.02)
        init_linear_and_norm(m for name, m in self.named_modules() if not name.startswith("backbone"))

    # -- masking ------------------------------------------------------------------------------------

    def grid_of(self, video: torch.Tensor) -> tuple[int, int, int]:
        return tuple(self.backbone.token_grids(*video.shape[-3:])[0])

    def random_mask(self, video: torch.Tensor, generator: torch.Generator | None = None) -> TokenMask:
        """One mask per clip of the configured type and ratio; index tensors on ``video``'s device."""
        return mask_tokens(
            video.shape[0], self.grid_of(video), self.mask_ratio, self.cfg.mask_type,
            block=self.cfg.mask_block, generator=generator, device=video.device,
        )

    # -- encoder / decoder / loss ------------------------------------------------------------------

    def forward_encoder(self, video: torch.Tensor, mask: TokenMask) -> torch.Tensor:
        """(B, C, T, H, W) -> latent (B, K, D) for the kept tokens only (CLS output dropped).

        Only the K kept tubelets are embedded and enter the blocks: the encoder's sequence length is
        K (+1 with CLS), never N.
        """
        latent = self.backbone.forward_features(video, keep_idx=mask.keep)  # (B, P + K, D), normed
        return latent[:, self.backbone.num_prefix_tokens :]

    def forward_decoder(
        self, latent: torch.Tensor, mask: TokenMask, grid: Sequence[int], positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """latent (B, K, D) -> pred (B, N, target_dim) for every token position (time-slowest order).

        With ``positions (B, M)`` (token indices) only those predictions are made, ``-> (B, M,
        target_dim)``: the same values, but the last block, the norm and the prediction layer run on M
        tokens (every position is still a key of that block's attention). Training asks for the removed
        tokens only, since the visible ones are not scored.
        """
        x = self.decoder_embed(latent)  # (B, K, dd)
        B, K, dd = x.shape
        N = mask.ids_restore.shape[1]
        mask_tokens_ = self.mask_token.to(x.dtype).expand(B, N - K, dd)  # (B, N-K, dd)
        x = torch.cat([x, mask_tokens_], dim=1)  # (B, N, dd) in shuffled order: kept first
        # Un-shuffle: token n takes row ids_restore[n] of the shuffled sequence.
        x = torch.gather(x, 1, mask.ids_restore.unsqueeze(-1).expand(-1, -1, dd))  # (B, N, dd)
        x = self.decoder_pos_embed(x, tuple(grid))
        subset = positions is not None and positions.shape[1] < N and len(self.decoder_blocks) > 0
        for i, blk in enumerate(self.decoder_blocks):
            last = i == len(self.decoder_blocks) - 1
            x = blk(x, query_idx=positions if subset and last else None)  # last: (B, M, dd) if subset
        if positions is not None and not subset:  # every position asked for, or no blocks: gather
            x = torch.gather(x, 1, positions.unsqueeze(-1).expand(-1, -1, dd))
        x = self.decoder_norm(x)
        return self.decoder_pred(x)  # (B, N or M, target_dim)

    def targets(self, video: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel targets (B, M or N, target_dim), per-patch normalised when ``norm_pix_loss``."""
        target = patchify(video, self.patch_size, idx, frames=self.cfg.target_frames)
        if self.cfg.norm_pix_loss:
            target = normalize_patches(target)[0]
        return target

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, mask: TokenMask) -> torch.Tensor:
        """Mean over removed tokens of the per-token MSE (Sec. 3 "Loss"); visible tokens are not scored.

        video: (B, C, T, H, W); pred: (B, M, target_dim), the predictions at ``mask.masked`` in that
        order (``forward_decoder(..., positions=mask.masked)``). Every clip removes the same number of
        tokens M, so the mean over (B, M) equals sum_i m_i * mse_i / sum_i m_i.
        """
        if pred.shape[:2] != mask.masked.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)} must hold the predictions of the {tuple(mask.masked.shape)} removed "
                "tokens (forward_decoder(..., positions=mask.masked))"
            )
        target = self.targets(video, mask.masked)  # (B, M, target_dim), only removed tokens
        return (pred.float() - target.float()).pow(2).mean()

    def forward(self, batch: Batch, mask: TokenMask | None = None) -> dict:
        video = batch["video"]
        if video.ndim == 6:  # repeated sampling: (B, r, C, T, H, W) -> (B*r, C, T, H, W)
            video = video.flatten(0, 1)
        if mask is None:
            mask = self.random_mask(video)
        grid = self.grid_of(video)
        latent = self.forward_encoder(video, mask)
        pred = self.forward_decoder(latent, mask, grid, positions=mask.masked)  # (B, M, target_dim)
        loss = self.forward_loss(video, pred, mask)
        return {"loss": loss}

    # -- visualisation -----------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, mask: TokenMask | None = None) -> dict[str, torch.Tensor]:
        """Original, masked and reconstructed target frames, all (B, C, T'', H, W) in input units.

        With ``target_frames="first"`` the frames are the first of each cube (T'' = T / pt). The
        predictions are per-patch normalised; they are un-normalised with each target patch's own mean
        and variance, and visible patches are pasted from the original (as MAE's visualisation does).
        """
        if mask is None:
            mask = self.random_mask(video)
        grid = self.grid_of(video)
        pred = self.forward_decoder(self.forward_encoder(video, mask), mask, grid)  # (B, N, P)
        raw = patchify(video, self.patch_size, frames=self.cfg.target_frames)  # (B, N, P)
        if self.cfg.norm_pix_loss:
            _, mean, var = normalize_patches(raw)
            pred = pred * (var + NORM_PIX_EPS) ** 0.5 + mean
        removed = mask.dense().unsqueeze(-1).to(pred.dtype)  # (B, N, 1), 1 = removed
        recon = pred * removed + raw * (1 - removed)
        masked = raw * (1 - removed)
        un = lambda p: unpatchify(p, self.target_patch, grid, self.in_chans)  # noqa: E731
        return {"original": un(raw), "masked": un(masked), "reconstruction": un(recon), "mask": removed}


@register_method("mae_st", MAESTConfig)
def build(recipe: Recipe, context: RunContext) -> MAEST:
    """The MAE-ST method from a recipe; the backbone has no classification head (``num_classes=0``), so
    ``backbone.safetensors`` fits any fine-tuning head. ``model.checkpoint`` (optional) initialises the
    encoder, e.g. to continue pre-training, by the shared loading policy."""
    m = recipe.model
    backbone = build_backbone(m, num_classes=0)
    grid = backbone.token_grids(m.num_frames, m.img_size, m.img_size)[0]
    return MAEST(backbone, recipe.method, grid)
