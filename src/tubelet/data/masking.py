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
) -> TokenMask:
    """Draw one independent mask per sample over a ``grid = (T', H', W')`` of tokens.

    Returns ``TokenMask(keep (B, K), masked (B, N-K), ids_restore (B, N))``. ``keep`` and ``masked``
    are in shuffled (noise) order, as in MAE; ``cat([keep, masked], 1)`` gathered by ``ids_restore``
    is ``arange(N)``. The noise is drawn on the generator's device, then moved to ``device``.
    """
    unit_of_token, num_units = _unit_ids(grid, mask_type, block)
    N = unit_of_token.numel()
    unit_size = N // num_units
    K = num_kept(num_units, ratio) * unit_size
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.rand(batch_size, num_units, generator=generator, device=gen_device)  # (B, U)
    if mask_type != "random":
        noise = noise[:, unit_of_token.to(gen_device)]  # (B, N): tokens share their unit's noise
    # Stable sort: ties (tokens of one unit) keep token order, so whole units are kept or removed.
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # (B, N) ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N) inverse permutation
    if device is not None:
        ids_shuffle, ids_restore = ids_shuffle.to(device), ids_restore.to(device)
    return TokenMask(ids_shuffle[:, :K], ids_shuffle[:, K:], ids_restore)


def random_masking(batch_size: int, grid: Sequence[int], ratio: float = 0.9, **kw) -> TokenMask:
    """Space-time agnostic random masking, the MAE-ST default (Sec. 3, 90%)."""
    return mask_tokens(batch_size, grid, ratio, "random", **kw)


def tube_masking(batch_size: int, grid: Sequence[int], ratio: float = 0.9, **kw) -> TokenMask:
    """Space-only masking: one random spatial mask repeated over time (Table 2a "tube")."""
    return mask_tokens(batch_size, grid, ratio, "tube", **kw)


def frame_masking(batch_size: int, grid: Sequence[int], ratio: float = 0.75, **kw) -> TokenMask:
    """Time-only masking: whole time slices removed (Table 2a "frame")."""
    return mask_tokens(batch_size, grid, ratio, "frame", **kw)


def cube_masking(
    batch_size: int, grid: Sequence[int], ratio: float = 0.75, block: Sequence[int] = (2, 2, 2), **kw
) -> TokenMask:
    """Space-time block masking with fixed ``block`` = (bt, bh, bw) tokens (Table 2a "cube")."""
    return mask_tokens(batch_size, grid, ratio, "cube", block=block, **kw)
