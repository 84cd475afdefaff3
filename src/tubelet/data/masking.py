"""Token masking generators for masked video modelling (MAE-ST, arXiv 2205.09113, Sec. 3 and Table 2a).

A mask over ``N = T' * H' * W'`` tokens (time slowest: ``n = t*H'*W' + h*W' + w``) is returned as index
tensors, never as dense boolean masks that the encoder would have to skip: ``keep`` ``(B, K)`` are the
tokens the encoder sees, ``masked`` ``(B, N-K)`` the removed ones, and ``ids_restore`` ``(B, N)`` the
inverse permutation that puts ``cat([keep, masked])`` back in token order (MAE's "un-shuffle").

Every type is one rule: draw ``u ~ U(0, 1)`` per *unit*, give each token its unit's noise, sort tokens by
noise (stable, so a unit's tokens stay together) and keep the first ``K``. The unit is

- ``random``: one token (the paper's default, agnostic to space-time; ``K = floor(N (1 - ratio))``,
  1568 tokens at 90% -> 156 kept);
- ``tube``: one spatial location over all times ("space-only": the same spatial mask for every time);
- ``frame``: one time slice over all locations ("time-only");
- ``cube``: a ``block = (bt, bh, bw)`` space-time block of tokens. The paper's cube masking follows
  BEiT's block-wise sampling with blocks of random size; here blocks have a fixed size so that the
  mask is vectorised and every sample keeps exactly the same number of tokens (a batch is one tensor).

For the structured types ``K = floor(units * (1 - ratio)) * unit_size``, so whole units are kept.
Masks are reproducible: pass a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

MASK_TYPES = ("random", "tube", "frame", "cube")


class TokenMask(NamedTuple):
    """Index form of a mask. ``keep``: (B, K); ``masked``: (B, N-K); ``ids_restore``: (B, N)."""

    keep: torch.Tensor
    masked: torch.Tensor
    ids_restore: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.ids_restore.shape[1]

    def dense(self) -> torch.Tensor:
        """(B, N) float mask in token order, 1 = removed (MAE's ``mask``), for losses and display."""
        B, N = self.ids_restore.shape
        m = torch.ones(B, N, device=self.ids_restore.device)
        m[:, : self.keep.shape[1]] = 0
        return torch.gather(m, 1, self.ids_restore)


def num_kept(num_units: int, ratio: float) -> int:
    """``floor(num_units * (1 - ratio))``, as MAE's ``int(L * (1 - mask_ratio))``.

    A tolerance of 1e-9 stops binary rounding from dropping a whole unit (e.g. 10 * (1 - 0.9) =
    0.99999... would otherwise keep 0); 1568 tokens give 156 / 78 / 392 kept at 0.9 / 0.95 / 0.75.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(math.floor(num_units * (1.0 - ratio) + 1e-9))


def _unit_ids(grid: Sequence[int], mask_type: str, block: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Unit index of every token (N,) in token order, and the number of units."""
    T, H, W = (int(g) for g in grid)
    t = torch.arange(T).view(T, 1, 1)
    h = torch.arange(H).view(1, H, 1)
    w = torch.arange(W).view(1, 1, W)
    if mask_type == "random":
        ids = t * H * W + h * W + w
        return ids.expand(T, H, W).reshape(-1), T * H * W
    if mask_type == "tube":
        return (h * W + w).expand(T, H, W).reshape(-1), H * W
    if mask_type == "frame":
        return t.expand(T, H, W).reshape(-1), T
    if mask_type == "cube":
        bt, bh, bw = (min(int(b), g) for b, g in zip(block, (T, H, W)))
        if T % bt or H % bh or W % bw:
            raise ValueError(f"cube masking: block {tuple(block)} must divide the token grid {(T, H, W)}")
        gh, gw = H // bh, W // bw
        ids = (t // bt) * gh * gw + (h // bh) * gw + (w // bw)
        return ids.expand(T, H, W).reshape(-1), (T // bt) * gh * gw
    raise ValueError(f"unknown mask type '{mask_type}'; known: {', '.join(MASK_TYPES)}")


def mask_tokens(
    batch_size: int,
    grid: Sequence[int],
    ratio: float,
    mask_type: str = "random",
    block: Sequence[int] = (2, 2, 2),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    noise: torch.Tensor | None = None,
) -> TokenMask:
    """Draw one independent mask per sample over a ``grid = (T', H', W')`` of tokens.

    Returns ``TokenMask(keep (B, K), masked (B, N-K), ids_restore (B, N))``. ``keep`` and ``masked``
    are in shuffled (noise) order, as in MAE; ``cat([keep, masked], 1)`` gathered by ``ids_restore``
    is ``arange(N)``. The noise is drawn on the generator's device, then moved to ``device``;
    ``noise (B, units)`` given (e.g. :func:`seeded_noise`) replaces the draw.
    """
    unit_of_token, num_units = _unit_ids(grid, mask_type, block)
    N = unit_of_token.numel()
    unit_size = N // num_units
    K = num_kept(num_units, ratio) * unit_size
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if noise is None:
        noise = torch.rand(batch_size, num_units, generator=generator, device=gen_device)  # (B, U)
    elif tuple(noise.shape) != (batch_size, num_units):
        raise ValueError(f"noise must be (B={batch_size}, units={num_units}), got {tuple(noise.shape)}")
    else:
        gen_device = noise.device
    if mask_type != "random":
        noise = noise[:, unit_of_token.to(gen_device)]  # (B, N): tokens share their unit's noise
    # Stable sort: ties (tokens of one unit) keep token order, so whole units are kept or removed.
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # (B, N) ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N) inverse permutation
    if device is not None:
        ids_shuffle, ids_restore = ids_shuffle.to(device), ids_restore.to(device)
    return TokenMask(ids_shuffle[:, :K], ids_shuffle[:, K:], ids_restore)


def seeded_noise(seeds: Sequence[int], num_units: int) -> torch.Tensor:
    """``(B, num_units)`` uniform noise, row ``b`` a pure function of ``seeds[b]`` (a sample's own seed).

    A mask drawn from it depends on the sample alone, not on which process or batch holds the sample,
    so training on W processes draws the masks one process draws for the same global batch. One small
    generator per sample: B draws of ``num_units`` values, negligible beside the encoder.
    """
    rows = []
    for s in seeds:
        # decorrelate from the sample's own augmentation stream, which starts from the same seed
        g = torch.Generator().manual_seed((int(s) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & ((1 << 63) - 1))
        rows.append(torch.rand(num_units, generator=g))
    return torch.stack(rows) if rows else torch.empty(0, num_units)


# --------------------------------------------------------------------------------------------------
# MaskFeat block masks (Wei et al., arXiv 2112.09133; PySlowFast ``MaskingGenerator3D`` / BEiT's
# ``MaskingGenerator``, METHODS.md §3.3-3.4). Unlike the index masks above, the encoder sees every token
# (masked ones replaced by a mask token), so these are dense boolean masks over a grid of *units*
# (True = masked) and samples may mask slightly different counts.
# --------------------------------------------------------------------------------------------------

MASKFEAT_MASK_TYPES = ("cube", "tube", "frame", "block")


def _draw_block_mask(
    shape: Sequence[int],
    budget: int,
    min_area: float,
    max_area: float,
    min_aspect: float,
    max_aspect: float,
    max_tries: int,
    max_extent_t: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Greedy block masking on a ``(T, H, W)`` unit grid; ``(T, H, W)`` bool, at most ``budget`` True.

    Each block: spatial area ``a ~ U[min_area, max_area]``, aspect ``r = exp(U[ln min_aspect,
    ln max_aspect])``, ``h = round(sqrt(a r))``, ``w = round(sqrt(a / r))`` (strictly smaller than the
    grid, as the reference), temporal extent ``t ~ U{1..max_extent_t}``, uniform position. A block is
    accepted when it covers at least one new unit and its new units fit the remaining budget; up to
    ``max_tries`` draws per block. Blocks are added until the budget is met or a block finds no place.
    The loop is over blocks and tries (tens per mask), never over units.
    """
    T, H, W = (int(s) for s in shape)
    mask = np.zeros((T, H, W), dtype=bool)
    lo, hi = math.log(min_aspect), math.log(max_aspect)
    count = 0
    while count < budget:
        remaining = budget - count
        # All of this block's random numbers in one draw (reproducible under a seeded generator).
        u = torch.rand(max_tries, 6, generator=generator, dtype=torch.float64).numpy()
        delta = 0
        for area_u, aspect_u, t_u, top_u, left_u, front_u in u:
            area = min_area + (max_area - min_area) * area_u
            aspect = math.exp(lo + (hi - lo) * aspect_u)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            t = 1 + int(t_u * max_extent_t)
            if not (w < W and h < H) or t > T:
                continue
            top = int(top_u * (H - h + 1))
            left = int(left_u * (W - w + 1))
            front = int(front_u * (T - t + 1))
            window = mask[front : front + t, top : top + h, left : left + w]
            new = int(t * h * w - window.sum())
            if 0 < new <= remaining:
                window[...] = True
                delta = new
                break
        if delta == 0:
            break
        count += delta
    return torch.from_numpy(mask)


def maskfeat_cube_mask(
    grid: Sequence[int] = (8, 7, 7),
    ratio: float = 0.4,
    min_area: float | None = None,
    max_area: float | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    max_tries: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MaskFeat's video cube mask on a ``(T, H, W)`` unit grid -> ``(T, H, W)`` bool (True = masked).

    Defaults are the Kinetics setting: 8x7x7 units (a unit is 2 frames x 32x32 pixels = 1x2x2 output
    tokens), budget ``round(0.4 * 392) = 157`` units; block area ``U[H*W // 5, H*W] = U[9, 49]`` units,
    aspect ``exp(U[ln 0.3, ln 1/0.3])``, temporal extent ``U{1..T}``, 100 tries per block.
    """
    T, H, W = (int(g) for g in grid)
    budget = int(round(ratio * T * H * W))
    max_area = float(H * W if max_area is None else max_area)
    min_area = float((H * W) // 5 if min_area is None else min_area)
    return _draw_block_mask((T, H, W), budget, min_area, max_area, min_aspect, max_aspect or 1.0 / min_aspect,
                            max_tries, T, generator)


def beit_block_mask(
    grid: Sequence[int] = (14, 14),
    ratio: float = 0.4,
    min_area: float = 15,
    max_area: float | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    max_tries: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT block-wise mask on an ``(H, W)`` token grid -> ``(H, W)`` bool (MaskFeat on images).

    14x14 tokens at 40%: budget ``round(196 * 0.4) = 78``, blocks of at least 15 tokens (at most the
    budget), aspect in [0.3, 1/0.3] (log-uniform), 10 tries per block.
    """
    H, W = (int(g) for g in grid)
    budget = int(round(ratio * H * W))
    max_area = float(budget if max_area is None else max_area)
    m = _draw_block_mask((1, H, W), budget, float(min_area), max_area, min_aspect, max_aspect or 1.0 / min_aspect,
                         max_tries, 1, generator)
    return m[0]


def maskfeat_masks(
    batch_size: int,
    grid: Sequence[int],
    ratio: float = 0.4,
    mask_type: str = "cube",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(B, T, H, W)`` bool unit masks, one independent draw per sample.

    ``cube``: ``maskfeat_cube_mask``; ``tube``: one 2-D BEiT-style block mask on (H, W) (budget
    ``round(ratio * H * W)``, block area ``U[H*W // 5, H*W]``, 100 tries) repeated over all T;
    ``frame``: ``round(ratio * T)`` whole time steps; ``block``: ``beit_block_mask`` on (H, W) (images:
    T must be 1).
    """
    T, H, W = (int(g) for g in grid)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    out = torch.zeros(batch_size, T, H, W, dtype=torch.bool)
    for b in range(batch_size):
        if mask_type == "cube":
            out[b] = maskfeat_cube_mask((T, H, W), ratio, generator=generator)
        elif mask_type == "tube":
            budget = int(round(ratio * H * W))
            m = _draw_block_mask((1, H, W), budget, float((H * W) // 5), float(H * W), 0.3, 1 / 0.3, 100, 1, generator)
            out[b] = m.expand(T, H, W)
        elif mask_type == "frame":
            k = int(round(ratio * T))
            out[b, torch.randperm(T, generator=generator)[:k]] = True
        elif mask_type == "block":
            if T != 1:
                raise ValueError(f"block (image) masks need a one-frame grid, got {tuple(grid)}")
            out[b, 0] = beit_block_mask((H, W), ratio, generator=generator)
        else:
            raise ValueError(f"unknown MaskFeat mask type '{mask_type}'; known: {', '.join(MASKFEAT_MASK_TYPES)}")
    return out


def upsample_unit_mask(mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Nearest-upsample ``(B, t, h, w)`` unit masks to a token ``grid`` (T', H', W') -> ``(B, N)``.

    Token n (time slowest) takes the value of the unit it lies in; ``grid`` must be a whole multiple of
    the unit grid (8x7x7 units -> 8x14x14 output tokens or 8x56x56 MViT stem tokens).
    """
    B, t, h, w = mask.shape
    T, H, W = (int(g) for g in grid)
    if T % t or H % h or W % w:
        raise ValueError(f"token grid {tuple(grid)} is not a multiple of the unit grid {(t, h, w)}")
    m = mask[:, :, None, :, None, :, None].expand(B, t, T // t, h, H // h, w, W // w)
    return m.reshape(B, T * H * W)
