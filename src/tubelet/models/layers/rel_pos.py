"""Decomposed relative positions of MViTv2 (Li et al., arXiv 2112.01526, Sec. 3.1, Eq. 3).

The relative term of the logit between query i and key j is split over the axes,

    R_{p(i), p(j)} = R^h[h(i) - h(j)] + R^w[w(i) - w(j)] + R^t[t(i) - t(j)],

and is made query dependent by a dot product with the query: ``Q_i . R_{p(i), p(j)}``. Each axis has
its own table of ``2 * max(q, k) - 1`` rows of ``head_dim`` values, shared by all heads. When the query
and key grids differ in size along an axis the distance is rescaled so both grids span the same extent
(the rule of the released code, METHODS.md section 1, step 4):

    index(i, j) = floor(i * max(k/q, 1) - j * max(q/k, 1) + (k - 1) * max(q/k, 1)).

Tables are linearly interpolated when a grid needs a length other than the one they were built for,
so a model built for 16x224x224 runs at any input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rel_pos_table_size(q_size: int, k_size: int) -> int:
    """Rows of a relative-position table for one axis: ``2 * max(q, k) - 1``."""
    return 2 * max(q_size, k_size) - 1


def interpolate_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly resample a ``(L, C)`` table to ``(length, C)`` (``align_corners=False``, as the reference)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t()


def rel_pos_index(q_size: int, k_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``(q_size, k_size)`` int64 indices into a ``2 * max(q, k) - 1`` table (rescaled distances).

    Computed in float32 exactly as the released code does, so indices agree with its weights even when
    the ratio ``k/q`` is not an integer.
    """
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    qi = torch.arange(q_size, device=device)[:, None]
    kj = torch.arange(k_size, device=device)[None, :]
    dist = qi * q_ratio - kj * k_ratio
    dist = dist + (k_size - 1) * k_ratio
    return dist.long()


def gather_rel_pos(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Embeddings for every (query, key) position pair along one axis: ``(q_size, k_size, C)``."""
    table = interpolate_rel_pos(table, rel_pos_table_size(q_size, k_size))
    return table[rel_pos_index(q_size, k_size, table.device)]


def decomposed_rel_pos(
    q: torch.Tensor,
    q_grid: tuple[int, int, int],
    k_grid: tuple[int, int, int],
    rel_pos_t: torch.Tensor | None,
    rel_pos_h: torch.Tensor | None,
    rel_pos_w: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Query-dependent relative terms per axis, small and not yet broadcast.

    Args:
        q: patch queries (no CLS), ``(B, heads, Tq*Hq*Wq, C)``, time slowest. Pass the *unscaled* query:
            the released weights were trained with the term added after the ``1/sqrt(C)`` scaling.
        q_grid, k_grid: ``(T, H, W)`` token grids of queries and keys.
        rel_pos_t: ``(2*max(Tq,Tk)-1, C)`` table or ``None`` (no temporal term: image models, or
            ``rel_pos_temporal: false``).
        rel_pos_h, rel_pos_w: spatial tables, or both ``None`` (``rel_pos_spatial: false``); the axes
            are independent, so a temporal-only term is possible.

    Returns:
        ``(rel_t, rel_h, rel_w)``, each ``(B, heads, Nq, k_axis)`` or ``None`` where its table is: the
        bias of query i and key ``(t, h, w)`` is ``rel_t[i, t] + rel_h[i, h] + rel_w[i, w]``.
    """
    if (rel_pos_h is None) != (rel_pos_w is None):
        raise ValueError("the spatial relative-position tables come in pairs: give both rel_pos_h and rel_pos_w or neither")
    emb = [None if table is None else gather_rel_pos(table, q_grid[axis], k_grid[axis])
           for axis, table in enumerate((rel_pos_t, rel_pos_h, rel_pos_w))]
    return rel_pos_terms(q, q_grid, *emb)


def rel_pos_terms(
    q: torch.Tensor,
    q_grid: tuple[int, int, int],
    emb_t: torch.Tensor | None,
    emb_h: torch.Tensor | None,
    emb_w: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """:func:`decomposed_rel_pos` from embeddings already gathered per (query, key) coordinate pair:
    ``emb_*`` is ``(q_axis, k_axis, C)`` or ``None``; returns ``(B, heads, Nq, k_axis)`` per axis. Keys of
    several grids can share one product by concatenating their embeddings along ``k_axis``."""
    B, n, Nq, C = q.shape
    r_q = q.reshape(B, n, *q_grid, C)

    def term(R: torch.Tensor | None, spec: str) -> torch.Tensor | None:
        if R is None:
            return None
        return torch.einsum(spec, r_q, R.to(q.dtype)).reshape(B, n, Nq, R.shape[1])

    return term(emb_t, "bnthwc,tkc->bnthwk"), term(emb_h, "bnthwc,hkc->bnthwk"), term(emb_w, "bnthwc,wkc->bnthwk")


def rel_pos_bias(
    rel_t: torch.Tensor | None,
    rel_h: torch.Tensor | None,
    rel_w: torch.Tensor | None,
    k_grid: tuple[int, int, int],
    num_prefix: int = 0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Broadcast the per-axis terms into the dense bias ``(B, heads, P + Nq, P + Tk*Hk*Wk)``.

    ``num_prefix`` (P) leading rows and columns (CLS) are zero. Without autograd the sum is written
    straight into the padded buffer: one full-size write instead of a sum, a zero fill and a copy
    (fresh full-size buffers are expensive on CPU: page faults). ``out``: write into this tensor of
    that shape instead (a column slice of a larger bias; not differentiable) and return it.
    """
    present = [r for r in (rel_t, rel_h, rel_w) if r is not None]
    if not present:
        raise ValueError("rel_pos_bias needs at least one relative-position term")
    B, n, Nq, _ = present[0].shape
    kt, kh, kw = k_grid
    p = num_prefix
    zero = present[0].new_zeros(1, 1, 1, 1, 1)
    # (B, n, Nq, kh, kw): small; an absent axis contributes zero along its key coordinate
    hw = (rel_h[..., :, None] if rel_h is not None else zero) + (rel_w[..., None, :] if rel_w is not None else zero)
    hw = hw.expand(*hw.shape[:3], kh, kw)
    t = rel_t[..., :, None, None] if rel_t is not None else zero.new_zeros(1, 1, 1, kt, 1, 1)
    hw = hw[..., None, :, :]
    if out is not None or (p and not (torch.is_grad_enabled() and (t.requires_grad or hw.requires_grad))):
        bias = hw.new_empty(B, n, p + Nq, p + kt * kh * kw) if out is None else out
        bias[:, :, :p].zero_()
        bias[:, :, p:, :p].zero_()
        torch.add(t, hw, out=bias[:, :, p:, p:].view(B, n, Nq, kt, kh, kw))
        return bias
    full = (t + hw).expand(B, n, Nq, kt, kh, kw).reshape(B, n, Nq, kt * kh * kw)
    return F.pad(full, (p, 0, p, 0)) if p else full


def rel_pos_onehot(
    k_grid: tuple[int, int, int], temporal: bool, device: torch.device, dtype: torch.dtype, spatial: bool = True
) -> torch.Tensor:
    """``(Nk, [Tk +] [Hk + Wk])`` one-hot codes of each key's coordinates (time slowest), for the axes
    that have a relative term.

    With ``q' = [q / sqrt(C), rel_t, rel_h, rel_w]`` and ``k' = [k, onehot]``, ``q' . k'`` equals the
    scaled logit plus the decomposed relative term exactly; attention kernels then never need a dense,
    differentiable bias.
    """
    kt, kh, kw = k_grid
    parts = []
    if temporal:
        parts.append(F.one_hot(torch.arange(kt, device=device).repeat_interleave(kh * kw), kt))
    if spatial:
        parts.append(F.one_hot(torch.arange(kh, device=device).repeat_interleave(kw).repeat(kt), kh))
        parts.append(F.one_hot(torch.arange(kw, device=device).repeat(kt * kh), kw))
    if not parts:
        raise ValueError("rel_pos_onehot needs the temporal or the spatial axes")
    return torch.cat(parts, dim=1).to(dtype)
