"""Asymmetric Siamese designs (Wang et al., "On the Importance of Asymmetry for Siamese Representation
Learning", arXiv 2204.00613, Sec. 4), as options of every rho-SSL framework (methods/contrastive.py).

*Source* = the branch with gradients (the query); *target* = the branch that produces the keys /
targets (momentum encoder for MoCo and BYOL; the shared encoder for SimCLR and SwAV). The paper's
principle: keep the target's variance lower than the source's. Designs:

=========  ======  ==========================================================================
MultiCrop  source  extra small crops are extra queries (``batch["small"]``, data/rho.py); loss =
                   L(main) + mean over the small crops of L(small) (Sec. 4.1, Eq. 3)
ScaleMix   source  two source views of a clip mixed by one binary box shared by all frames
                   (``batch["mix"]``); :func:`scalemix`
AsymAug    both    strong source pipeline, weak target pipeline (``batch["target"]``)
AsymBN     target  the target projector's BN statistics over all views of the step at once (and
                   SyncBN over all processes), instead of per view; the source projector keeps
                   plain per-view BN; :func:`project_views`, :func:`target_projector`
MeanEnc    target  the key of clip i is the mean of the other clips' target embeddings, averaged
                   *before* L2 normalisation; :func:`mean_of_others`
=========  ======  ==========================================================================

Video extension (ours, not the paper's, which is image-only): a source/target pair is a pair of
rho clips; MeanEnc averages the other rho - 1 clips' keys (it changes nothing for rho = 2, use rho >= 3);
ScaleMix mixes two source draws of the same clip window with one box for all frames. Images are clips
with T = 1 and work unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tubelet.errors import ConfigError


def scalemix_boxes(n: int, height: int, width: int, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ScaleMix boxes for ``n`` clips: lambda ~ U(0, 1); box side ``sqrt(1 - lambda)`` times each image side,
    uniform centre, clipped to the frame. Returns ``(mask (n, 1, 1, H, W) bool, lam (n,))`` where the
    mask marks the pixels taken from the second view. Unlike the reference code, height and width are
    not swapped (which only mattered for non-square crops)."""
    lam = torch.rand(n, generator=generator)
    cut = torch.sqrt(1.0 - lam)
    bh, bw = (cut * height).floor(), (cut * width).floor()
    cy = torch.randint(0, height, (n,), generator=generator).float()
    cx = torch.randint(0, width, (n,), generator=generator).float()
    y1, y2 = (cy - bh / 2).clamp(0, height).floor(), (cy + bh / 2).clamp(0, height).floor()
    x1, x2 = (cx - bw / 2).clamp(0, width).floor(), (cx + bw / 2).clamp(0, width).floor()
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    inside = (ys >= y1.view(-1, 1, 1)) & (ys < y2.view(-1, 1, 1)) & (xs >= x1.view(-1, 1, 1)) & (xs < x2.view(-1, 1, 1))
    mask = inside.view(n, 1, 1, height, width)
    return (mask.to(device) if device is not None else mask), lam


def scalemix(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mix clips ``a`` and ``b`` (``(N, C, T, H, W)``, two source views of the same clips): the box of
    each clip comes from ``b``, the rest from ``a``. Output shape = input shape; labels are not mixed."""
    if a.shape != b.shape:
        raise ValueError(f"ScaleMix needs views of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    mask, _ = scalemix_boxes(a.shape[0], a.shape[-2], a.shape[-1], generator, device=a.device)
    return torch.where(mask, b, a)


def mean_of_others(k: torch.Tensor) -> torch.Tensor:
    """MeanEnc over clips: ``k (V, B, d)`` unnormalised target embeddings -> ``(V, B, d)`` where row i is
    the mean of rows j != i (the key of query i). Normalise afterwards: the average comes first."""
    v = k.shape[0]
    if v < 2:
        raise ValueError("MeanEnc needs at least two views per video")
    return (k.sum(dim=0, keepdim=True) - k) / (v - 1)


def project_views(head: nn.Module, z: torch.Tensor, views: int, joint: bool) -> torch.Tensor:
    """Run an MLP head over ``z (V*B, D)`` (view-major rows) per view — BN statistics over the B clips of
    one view, as when each view is a separate forward pass — or, with ``joint`` (AsymBN), over all
    V*B rows at once, a larger group whose statistics vary less."""
    if joint or views == 1:
        return head(z)
    return torch.cat([head(c) for c in z.chunk(views, dim=0)], dim=0)


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (plain or synchronised)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def sync_batchnorm(module: nn.Module, framework: str) -> nn.Module:
    """AsymBN across processes: ``module``'s BN as SyncBatchNorm over the default group (equivalent to
    plain BN in one process, where it falls back to local statistics). A projector without BN has
    nothing to synchronise, so AsymBN would silently be the baseline: refused."""
    if not has_batchnorm(module):
        raise ConfigError(
            f"method.asym_bn: the '{framework}' projector has no BatchNorm to synchronise (method.proj_bn is "
            "false or method.proj_layers is 1); set method.proj_bn to true or 'first', or asym_bn: false"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def target_projector(projector: nn.Module, framework: str) -> nn.Module:
    """AsymBN for a framework whose target *is* the source encoder (SimCLR, SwAV): a second view of the
    shared ``projector`` for the target branch only. It holds the same Linear weights and the same BN
    affine parameters (the very ``Parameter`` objects, so both branches train one projector, as in the
    paper), but its BN layers are SyncBatchNorm with their own batch statistics and running buffers.
    The source branch therefore keeps plain per-device, per-view BN (the paper: syncing the source
    hurts), and only the target branch's statistics are pooled. Chosen over one BN that switches on
    the call site because the two branches then also keep separate running estimates, as two
    encoders (MoCo's query and key) would."""
    tgt = sync_batchnorm(copy.deepcopy(projector), framework)
    for mod_t, mod_s in zip(tgt.modules(), projector.modules()):
        for name, p in mod_s.named_parameters(recurse=False):
            setattr(mod_t, name, p)
    return tgt


def multicrop_weights(num_small: int) -> tuple[float, float]:
    """Loss weights (main, each small crop): L(main) + mean over small crops (arXiv 2204.00613, Sec. 4.1)."""
    return 1.0, (1.0 / num_small if num_small > 0 else 0.0)


__all__ = [
    "has_batchnorm", "mean_of_others", "multicrop_weights", "project_views", "scalemix", "scalemix_boxes",
    "sync_batchnorm", "target_projector",
]
