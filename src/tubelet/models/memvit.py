"""MeMViT: Memory-Augmented Multiscale Vision Transformer (Wu et al., arXiv 2201.08383, CVPR 2022).

A long video is processed online, one short clip per forward, in time order. Each memory block caches
the pooled keys and values of earlier clips of the same video, compresses them with a learnable
strided depthwise convolution and lets the current clip attend to them (METHODS.md section 7):

    Q = pool_Q(X_t) W_Q,   K = [c_K(M_1), ..., c_K(M_m), pool_K(X_t)] W_K,   V likewise with c_V, W_V
    out = Softmax(Q K^T / sqrt(d) + E_rel + E_rel_mem + mask) V + Q

The backbone is MViTv2 with *pool-first* attention: pooling (depthwise conv + LN) runs on the block
input, before the Q/K/V projections, so what the cache holds is the normalised pre-projection tensor
and the *current* W_K, W_V are applied to memory and current tokens together (the release's scheme,
which is also the only one its compressor sizes fit; ``memory_cache="projected"`` caches after the
projections instead, as the paper describes). ``memory=False`` is the same network without memory:
the memory-free MViTv2 (pool-first) baseline, whose weights are a subset of the memory model's.

State: every memory block keeps its cache; :meth:`MeMViT.clear_memory` empties it. Samples carry a
video id (``video_ids``, one per batch slot): memory of another video is masked with ``-inf`` per sample,
so a slot that moves to a new video starts from a memory-free output. The batch size must stay
constant while memory is held (each slot is one stream). Gradient checkpointing is refused: a recomputed
forward would write the cache twice.

Registry names: ``memvit_16`` (MViTv2-S layout, 16x4, gap2), ``memvit_24`` (MViTv2-B layout, 32x3, gap3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.errors import ConfigError
from tubelet.models.layers.depthwise import DepthwiseConv3d
from tubelet.models.layers.pool_attention import Grid, pool_grid, pool_tokens
from tubelet.models.layers.rel_pos import (
    gather_rel_pos,
    interpolate_rel_pos,
    rel_pos_bias,
    rel_pos_onehot,
    rel_pos_table_size,
    rel_pos_terms,
)
from tubelet.models.mvit import MViT, MViTConfig
from tubelet.models.registry import register_model

MEMORY_CACHES = ("input", "projected")


@dataclass(frozen=True)
class MeMViTConfig(MViTConfig):
    """MeMViT-16 by default (depth 16, width 96, 1 head, doubling at 1, 3, 14, 16x4 input, gap2)."""

    memory: bool = True  # False: the same pool-first MViTv2 without memory (no compressors, no cache)
    memory_gap: int = 2  # sampler gapN: attend to every N-th past clip
    attn_max_len: int = 3  # clips attended per forward: memory entries + the current clip
    compress_kernel: tuple[int, int, int] = (7, 3, 3)
    compress_stride: tuple[int, int, int] = (4, 2, 2)
    memory_cache: str = "input"  # input: pre-projection tensors (release) | projected: after W_K, W_V (paper)
    drop_path_rate: float = 0.4

    @property
    def cache_length(self) -> int:
        """Clips the cache spans, the current one included: ``(attn_max_len - 1) * N + 1``."""
        return (self.attn_max_len - 1) * self.memory_gap + 1


def memory_offsets(num_past: int, gap: int, max_entries: int) -> list[int]:
    """How many clips back each attended memory entry lies, oldest first, given ``num_past`` cached clips.

    The release's gapN sampler: nothing until ``gap`` clips are cached, then every ``gap``-th clip counting
    back from ``t - gap``: with gap 2 and a full cache (t-4 ... t-1) that is t-4 and t-2.
    """
    used = min(num_past // gap, max_entries)
    return [gap * i for i in range(used, 0, -1)]


@dataclass
class MemoryEntry:
    """One cached clip of one memory block: pooled keys and values ``(B, P + T*H*W, C)`` over ``grid``."""

    k: torch.Tensor
    v: torch.Tensor
    grid: Grid
    video_ids: torch.Tensor | None  # (B,) int64; None: the caller said nothing about videos
    step: int  # forward counter of the clip (which clips were attended, for tests and reports)
    compressed: bool = False


@dataclass
class MemoryReport:
    """What the last forward of a memory block used: the steps of the attended entries and their grid."""

    steps: list[int] = field(default_factory=list)
    grid: Grid | None = None


class MemoryPoolingAttention(nn.Module):
    """Pool-first pooling attention with optional memory, ``(B, N, dim) -> (B, Nq, dim_out)``.

    Takes :class:`~tubelet.models.layers.pool_attention.PoolingAttention`'s arguments (pooling convs here
    see ``dim // num_heads`` channels: they run before the projections), plus the memory options:
    ``memory`` (this block reads and writes a cache), ``gap``, ``attn_max_len``, ``compress_kernel``,
    ``compress_stride`` and ``memory_cache`` (see :class:`MeMViTConfig`).
    """

    # Devices on which memory's relative terms are written by a product with a 0/1 code matrix instead of
    # a broadcast add (same values to rounding; FLOP counts run on meta and keep the add: no multiply-adds).
    _code_devices: tuple[str, ...] = ("cpu",)

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        input_grid: Grid,
        kernel: Grid = (3, 3, 3),
        q_stride: Grid = (1, 1, 1),
        kv_stride: Grid = (1, 1, 1),
        qkv_bias: bool = True,
        rel_pos_spatial: bool = True,
        rel_pos_temporal: bool = True,
        residual_pooling: bool = True,
        num_prefix: int = 1,
        spatial_only: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        attn_impl: str = "auto",
        memory: bool = False,
        gap: int = 2,
        attn_max_len: int = 3,
        compress_kernel: Grid = (7, 3, 3),
        compress_stride: Grid = (4, 2, 2),
        memory_cache: str = "input",
    ) -> None:
        super().__init__()
        if spatial_only:
            raise ConfigError("MeMViT is a video model: video must be true")
        if dim % num_heads or dim_out % num_heads:
            raise ConfigError(f"MeMViT block widths {dim} -> {dim_out} are not divisible by num_heads={num_heads}")
        del attn_impl  # one formulation here (MeMViT refuses the others): a dense bias with memory's terms and mask
        self.num_heads = num_heads
        self.dim, self.dim_out = dim, dim_out
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim**-0.5
        self.num_prefix = num_prefix
        self.residual_pooling = residual_pooling
        self.kernel = tuple(kernel)

        self.q = nn.Linear(dim, dim_out, bias=qkv_bias)
        self.k = nn.Linear(dim, dim_out, bias=qkv_bias)
        self.v = nn.Linear(dim, dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        # Pool-first: the depthwise conv runs per head on the input's dim // heads channels, weights shared
        # by all heads (the release's mode "conv"); (1,1,1) kernels with stride 1 are skipped.
        conv_dim = dim // num_heads

        def make_pool(stride: Grid) -> tuple[nn.Module | None, nn.Module | None]:
            if math.prod(self.kernel) == 1 and math.prod(stride) == 1:
                return None, None
            pad = [k // 2 for k in self.kernel]
            conv = DepthwiseConv3d(conv_dim, self.kernel, stride=stride, padding=pad)
            return conv, norm_layer(conv_dim)

        self.pool_q, self.norm_q = make_pool(tuple(q_stride))
        self.pool_k, self.norm_k = make_pool(tuple(kv_stride))
        self.pool_v, self.norm_v = make_pool(tuple(kv_stride))
        q_grid = pool_grid(input_grid, self.kernel, q_stride) if self.pool_q is not None else input_grid
        k_grid = pool_grid(input_grid, self.kernel, kv_stride) if self.pool_k is not None else input_grid

        self.rel_pos_spatial = rel_pos_spatial
        self.rel_pos_temporal = rel_pos_temporal

        def table(rows: int) -> nn.Parameter:
            t = nn.Parameter(torch.zeros(rows, self.head_dim))
            nn.init.trunc_normal_(t, std=0.02)
            return t

        if rel_pos_spatial:
            self.rel_pos_h = table(rel_pos_table_size(q_grid[1], k_grid[1]))
            self.rel_pos_w = table(rel_pos_table_size(q_grid[2], k_grid[2]))
        if rel_pos_temporal:
            self.rel_pos_t = table(rel_pos_table_size(q_grid[0], k_grid[0]))

        self.memory = memory
        self.gap = int(gap)
        self.max_entries = int(attn_max_len) - 1
        self.memory_cache = memory_cache
        self.compress_stride = tuple(compress_stride)
        self._cache: list[MemoryEntry] = []
        self._video_ids: torch.Tensor | None = None
        self._step = 0
        self._codes: dict[tuple, torch.Tensor] = {}
        self.last_memory = MemoryReport()
        if memory:
            # The release sizes its compressors to the block's input width (pre-projection cache); the
            # projected cache compresses dim_out channels instead.
            c = dim if memory_cache == "input" else dim_out
            pad = [k // 2 for k in compress_kernel]
            self.compress_k = DepthwiseConv3d(c, compress_kernel, stride=compress_stride, padding=pad)
            self.compress_v = DepthwiseConv3d(c, compress_kernel, stride=compress_stride, padding=pad)
            self.norm_compress_k = norm_layer(c)
            self.norm_compress_v = norm_layer(c)
            m_grid = pool_grid(k_grid, tuple(compress_kernel), tuple(compress_stride))
            # Memory has its own tables. Spatial: the usual rescaled-distance rule between the query grid
            # and the compressed grid (the release sizes them with kv // stride, 3 instead of the true 4
            # for a 7-wide map; the true size is used here and tables interpolate as everywhere else).
            if rel_pos_spatial:
                self.rel_pos_mem_h = table(rel_pos_table_size(q_grid[1], m_grid[1]))
                self.rel_pos_mem_w = table(rel_pos_table_size(q_grid[2], m_grid[2]))
            if rel_pos_temporal:
                # Release: attn_max_len * T - 1 rows; at least as many as the build grid's distances need
                # (tiny test grids would index past the release's size).
                needed = q_grid[0] + (self.max_entries * m_grid[0] - 1) * self.compress_stride[0]
                self.rel_pos_mem_t = table(max(int(attn_max_len) * input_grid[0] - 1, needed))

    # -- memory state ----------------------------------------------------------------------------------------
    def clear_memory(self) -> None:
        self._cache = []
        self._step = 0
        self.last_memory = MemoryReport()

    @property
    def cached_entries(self) -> list[MemoryEntry]:
        return list(self._cache)

    def _compress(self, x: torch.Tensor, grid: Grid, conv: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, Grid]:
        # Each entry keeps its CLS token uncompressed (followed: the release's attention_pool passes prefix
        # tokens around the conv); the LN then normalises CLS too.
        x, new_grid = pool_tokens(x, conv, grid, self.num_prefix, False)
        return norm(x), new_grid

    def compress(self, k: torch.Tensor, v: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor, Grid]:
        """``c_K``, ``c_V`` on one cached clip: ``(B, P + T*H*W, C)`` -> ``(B, P + T'*H'*W', C)`` with the new grid."""
        ck, m_grid = self._compress(k, grid, self.compress_k, self.norm_compress_k)
        cv, _ = self._compress(v, grid, self.compress_v, self.norm_compress_v)
        return ck, cv, m_grid

    def _read_and_write(
        self, k: torch.Tensor, v: torch.Tensor, k_grid: Grid
    ) -> list[tuple[torch.Tensor, torch.Tensor, Grid, torch.Tensor | None]]:
        """The attended memory (compressed keys, values, grid, per-sample "same video") and the cache update."""
        B = k.shape[0]
        ids = self._video_ids
        past = self._cache
        if past and past[-1].k.shape[0] != B:
            raise ValueError(
                f"MeMViT memory holds streams of {past[-1].k.shape[0]} batch slots but this batch has {B} clips: "
                "keep the batch size constant while memory is on (drop_last) or call clear_memory() first")
        if ids is not None and ids.shape != (B,):
            raise ValueError(f"video_ids must have one id per clip, shape ({B},), got {tuple(ids.shape)}")
        used: list[tuple[torch.Tensor, torch.Tensor, Grid, torch.Tensor | None]] = []
        report = MemoryReport()
        for offset in memory_offsets(len(past), self.gap, self.max_entries):
            entry = past[len(past) - offset]
            if entry.compressed:
                mk, mv, m_grid = entry.k, entry.v, entry.grid
            else:
                # Pipelined compression with stop-gradient: the entry was stored detached and uncompressed; it
                # is compressed inside the graph of the first forward that attends to it (so c_K and c_V get
                # gradients), then stored compressed and detached. Departure: the release compresses at
                # t + 1, a forward that gapN (N >= 2) never attends the entry in, so there its compressors
                # would never receive a gradient.
                mk, mv, m_grid = self.compress(entry.k, entry.v, entry.grid)
                entry.k, entry.v, entry.grid, entry.compressed = mk.detach(), mv.detach(), m_grid, True
            same = None
            if ids is not None and entry.video_ids is not None:
                same = entry.video_ids == ids
            used.append((mk, mv, m_grid, same))
            report.steps.append(entry.step)
            report.grid = m_grid
        # Departure: only blocks that read memory write it. The release caches and compresses in every
        # block, the odd ones too, whose cache nothing reads.
        past.append(MemoryEntry(k.detach(), v.detach(), k_grid, None if ids is None else ids.detach().clone(),
                                self._step))
        del past[: max(len(past) - self.gap * self.max_entries, 0)]
        self._step += 1
        self.last_memory = report
        return used

    # -- attention -------------------------------------------------------------------------------------------
    def _pool(self, x: torch.Tensor, pool: nn.Module | None, norm: nn.Module | None, grid: Grid) -> tuple[torch.Tensor, Grid]:
        if pool is None:
            return x, grid
        x, grid = pool_tokens(x, pool, grid, self.num_prefix, False)
        return norm(x), grid  # the release normalises CLS too

    def _memory_embeddings(
        self, q_grid: Grid, m_grid: Grid, n_entries: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Memory's relative-position embeddings per (query, memory key) coordinate pair: ``(Tq, E*Tm, d)``
        over the E entries laid back to back, ``(Hq, Hm, d)``, ``(Wq, Wm, d)``; ``None`` where absent."""
        emb_h = emb_w = None
        if self.rel_pos_spatial:
            emb_h = gather_rel_pos(self.rel_pos_mem_h, q_grid[1], m_grid[1])
            emb_w = gather_rel_pos(self.rel_pos_mem_w, q_grid[2], m_grid[2])
        emb_t = None
        if self.rel_pos_temporal:
            # Followed: memory tokens of all entries are laid out back to back before the clip, their
            # distance to query t being t + (M - 1 - m) * stride_t (the compression stride scales temporal
            # distances; the last memory frame sits at the clip's first frame). The real gap between the
            # attended clips (N clips under gapN) is not represented, as in the release.
            M = n_entries * m_grid[0]
            s = self.compress_stride[0]
            device = self.rel_pos_mem_t.device
            idx = torch.arange(q_grid[0], device=device)[:, None] + (M - 1 - torch.arange(M, device=device)[None, :]) * s
            tab = self.rel_pos_mem_t
            largest = q_grid[0] - 1 + (M - 1) * s  # idx.max(), known without reading a (possibly meta) tensor
            if largest >= tab.shape[0]:
                tab = interpolate_rel_pos(tab, largest + 1)
            emb_t = tab[idx]
        return emb_t, emb_h, emb_w

    def _rel_pos_terms(self, q: torch.Tensor, q_grid: Grid, k_grid: Grid, m_grid: Grid | None, n_entries: int):
        """Query-dependent relative terms, small and not yet broadcast: ``(clip, memory)``, each a triple
        ``(rel_t, rel_h, rel_w)`` of ``(B, n, Nq, k_axis)`` or ``None`` (memory's ``rel_t`` spans the E
        entries). Per axis, clip and memory keys share one product with the query (their embeddings are
        concatenated along the key axis): one pass over the queries instead of two."""
        clip: list[torch.Tensor | None] = [None, None, None]
        if self.rel_pos_temporal:
            clip[0] = gather_rel_pos(self.rel_pos_t, q_grid[0], k_grid[0])
        if self.rel_pos_spatial:
            clip[1] = gather_rel_pos(self.rel_pos_h, q_grid[1], k_grid[1])
            clip[2] = gather_rel_pos(self.rel_pos_w, q_grid[2], k_grid[2])
        mem = self._memory_embeddings(q_grid, m_grid, n_entries) if m_grid is not None else (None, None, None)
        joint = [c if m is None else m if c is None else torch.cat((c, m), dim=1) for c, m in zip(clip, mem)]
        terms = rel_pos_terms(q[:, :, self.num_prefix:], q_grid, *joint)
        out_clip, out_mem = [], []
        for r, c, m in zip(terms, clip, mem):
            kc = 0 if c is None else c.shape[1]
            out_clip.append(None if c is None else r[..., :kc])
            out_mem.append(None if m is None else r[..., kc:])
        return tuple(out_clip), tuple(out_mem)

    def _memory_code(self, m_grid: Grid, n_entries: int, temporal: bool, spatial: bool, device, dtype) -> torch.Tensor:
        """``(F, E*(P + Tm*Hm*Wm))`` 0/1 matrix: memory's terms ``[rel_t (E*Tm), rel_h (Hm), rel_w (Wm)]``
        times it give their broadcast sum at every memory key (zero at each entry's CLS key). Cached."""
        key = (m_grid, n_entries, temporal, spatial, device, dtype)
        code = self._codes.get(key)
        if code is None:
            Tm, Hm, Wm = m_grid
            one = rel_pos_onehot(m_grid, temporal, device, torch.float32, spatial=spatial)  # (Mt, [Tm] + [Hm+Wm])
            parts = []
            if temporal:
                parts.append(torch.kron(torch.eye(n_entries, device=device), one[:, :Tm]))  # entry e: its own Tm
                one = one[:, Tm:]
            if spatial:
                parts.append(one.repeat(n_entries, 1))
            code = torch.cat(parts, dim=1).view(n_entries, Tm * Hm * Wm, -1)
            code = F.pad(code, (0, 0, self.num_prefix, 0)).reshape(n_entries * (self.num_prefix + Tm * Hm * Wm), -1)
            code = self._codes[key] = code.t().contiguous().to(dtype)
        return code

    def attention_bias(
        self, q: torch.Tensor, q_grid: Grid, k_grid: Grid,
        used: list[tuple[torch.Tensor, torch.Tensor, Grid, torch.Tensor | None]], inplace: bool,
    ) -> torch.Tensor | None:
        """The additive logit term ``E_rel_mem + E_rel + mask``: ``(B, n, P + Nq, Nk)`` with the key columns
        ordered as the keys (each memory entry's ``P + Tm*Hm*Wm``, oldest first, then the clip's
        ``P + Tk*Hk*Wk``), or ``None`` (no relative positions, no memory).

        ``inplace`` (no autograd): every term is written into its columns of one buffer (one full-size
        write, no concatenation copy), all memory entries at once (a broadcast add, or on CPU a product
        with a 0/1 code matrix), and the mask is applied to the memory columns only, and only when some
        entry is from another video. Otherwise each part is built, concatenated and masked whole
        (differentiable). Both give the same values up to float rounding (the sum's order differs on CPU).
        """
        if inplace and torch.is_grad_enabled():
            raise ValueError("MemoryPoolingAttention.attention_bias(inplace=True) is not differentiable: "
                             "call it under torch.no_grad() or with inplace=False")
        p = self.num_prefix
        B, n, R, _ = q.shape
        m_grid = used[0][2] if used else None
        clip, mem = self._rel_pos_terms(q, q_grid, k_grid, m_grid, len(used))
        has_clip = any(r is not None for r in clip)
        if not used:
            return rel_pos_bias(*clip, k_grid, p) if has_clip else None
        E, Em = len(used), p + math.prod(m_grid)
        keep = None  # (B, E * Em) bool: memory columns each sample may attend; None: all of them
        if any(u[3] is not None for u in used):
            keep = torch.cat([(torch.ones(B, dtype=torch.bool, device=q.device) if same is None else same)[:, None]
                              .expand(B, Em) for *_, same in used], dim=1)
        if not inplace:
            Tm = m_grid[0]
            rel_t, rel_h, rel_w = mem
            if rel_t is None and rel_h is None:
                parts = [q.new_zeros(B, n, R, Em) for _ in range(E)]
            else:
                parts = [rel_pos_bias(None if rel_t is None else rel_t[..., e * Tm:(e + 1) * Tm], rel_h, rel_w,
                                      m_grid, p) for e in range(E)]
            parts.append(rel_pos_bias(*clip, k_grid, p) if has_clip else q.new_zeros(B, n, R, p + math.prod(k_grid)))
            bias = torch.cat(parts, dim=-1)
            if keep is not None:
                # Memory of another video: an additive -inf on its keys, for that sample only. The release
                # zeroes those entries instead, which still draws weight through LN, bias and relative terms.
                allowed = torch.cat([keep, keep.new_ones(B, bias.shape[-1] - E * Em)], dim=1)
                bias = bias.masked_fill(~allowed[:, None, None, :], float("-inf"))
            return bias
        Nk = E * Em + p + math.prod(k_grid)
        bias = q.new_empty(B, n, R, Nk)
        if has_clip:
            rel_pos_bias(*clip, k_grid, p, out=bias[..., E * Em:])
        else:
            bias[..., E * Em:].zero_()
        rel_t, rel_h, rel_w = mem
        if rel_t is None and rel_h is None:
            bias[..., :E * Em].zero_()
        elif q.device.type in self._code_devices:
            # On CPU a broadcast add into the strided memory columns runs inner loops of Wm (4) elements,
            # about 2.5x slower than one small matrix product writing every row's memory columns (the CLS
            # rows and keys included, as zeros) in one go.
            terms = torch.cat([r for r in mem if r is not None], dim=-1)
            code = self._memory_code(m_grid, E, rel_t is not None, rel_h is not None, q.device, q.dtype)
            torch.mm(F.pad(terms, (0, 0, p, 0)).reshape(B * n * R, -1), code,
                     out=bias.view(B * n * R, Nk)[:, :E * Em])
        else:
            bias[:, :, :p, :E * Em].zero_()  # CLS query rows get no term (the clip's columns are done above)
            block = bias[:, :, p:, :E * Em].view(B, n, R - p, E, Em)
            block[..., :p].zero_()  # each entry's CLS key
            Tm, Hm, Wm = m_grid
            tokens = block[..., p:].view(B, n, R - p, E, Tm, Hm, Wm)
            t = None if rel_t is None else rel_t.reshape(B, n, R - p, E, Tm, 1, 1)
            hw = None if rel_h is None else (rel_h[..., :, None] + rel_w[..., None, :])[..., None, None, :, :]
            if t is not None and hw is not None:
                torch.add(t, hw, out=tokens)
            else:
                tokens.copy_((t if t is not None else hw).expand(tokens.shape))
        if keep is not None and not bool(keep.all()):
            # One small reduction per block saves a write over the memory columns when the whole batch
            # continues its videos, the usual case.
            bias[..., :E * Em].masked_fill_(~keep[:, None, None, :], float("-inf"))
        return bias

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        """``x``: ``(B, N, dim)`` over ``grid`` (prefix first). Returns ``(B, Nq, dim_out)`` and the query grid."""
        B, N, C = x.shape
        n, d, p = self.num_heads, self.head_dim, self.num_prefix
        xh = x.reshape(B, N, n, C // n).transpose(1, 2)  # (B, n, N, C/n): pooling before projection
        q, q_grid = self._pool(xh, self.pool_q, self.norm_q, grid)
        k, k_grid = self._pool(xh, self.pool_k, self.norm_k, grid)
        v, _ = self._pool(xh, self.pool_v, self.norm_v, grid)

        def merge(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(B, t.shape[2], C)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, t.shape[1], n, d).transpose(1, 2)

        q = heads(self.q(merge(q)))
        k, v = merge(k), merge(v)
        if self.memory_cache == "projected":
            k, v = self.k(k), self.v(v)
        used = self._read_and_write(k, v, k_grid) if self.memory else []
        if used:
            k = torch.cat([u[0] for u in used] + [k], dim=1)
            v = torch.cat([u[1] for u in used] + [v], dim=1)
        if self.memory_cache == "input":
            k, v = self.k(k), self.v(v)  # the current W_K, W_V on memory and clip together
        k, v = heads(k), heads(v)

        # In-place writes into one buffer are not differentiable: with autograd the concatenated form runs.
        bias = self.attention_bias(q, q_grid, k_grid, used, inplace=not torch.is_grad_enabled())
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        if self.residual_pooling:
            if p:
                # residual pooling skips CLS, as in MViTv2
                out = torch.cat((out[:, :, :p], out[:, :, p:] + q[:, :, p:]), dim=2)
            else:
                out = out + q
        out = out.transpose(1, 2).reshape(B, -1, self.dim_out)
        return self.proj(out), q_grid


class MeMViT(MViT):
    """MViTv2 (pool-first) whose even-indexed blocks attend to compressed memory of earlier clips.

    ``forward(x, video_ids=None)``: ``x (B, C, T, H, W)`` is the next clip of each of B streams;
    ``video_ids (B,)`` int64 says which video each clip belongs to (memory of another video is masked).
    Without ids, every slot is taken to continue its stream: call :meth:`clear_memory` between videos.
    """

    def __init__(self, cfg: MeMViTConfig) -> None:
        if cfg.memory_cache not in MEMORY_CACHES:
            raise ConfigError(f"model.memory_cache must be one of {MEMORY_CACHES}, got '{cfg.memory_cache}'")
        if cfg.memory_gap < 1:
            raise ConfigError(f"model.memory_gap must be >= 1, got {cfg.memory_gap}")
        if cfg.attn_max_len < 1:
            raise ConfigError(f"model.attn_max_len must be >= 1 (the current clip), got {cfg.attn_max_len}")
        if cfg.attention != "softmax":
            raise ConfigError(f"MeMViT runs softmax pooling attention; model.attention='{cfg.attention}' is not supported")
        if cfg.memory and cfg.grad_checkpointing:
            raise ConfigError("model.grad_checkpointing with MeMViT memory: a recomputed forward would write the "
                              "memory cache twice; turn one of them off")
        if not cfg.video:
            raise ConfigError("MeMViT is a video model: model.video must be true")
        if cfg.attn_impl not in ("auto", "mask"):
            raise ConfigError(f"MeMViT runs one attention formulation (a dense bias carrying memory's relative terms "
                              f"and mask); model.attn_impl='{cfg.attn_impl}' is not supported, use 'auto'")
        super().__init__(cfg)

    def block_attention(self, index: int) -> Callable[..., nn.Module]:
        cfg: MeMViTConfig = self.cfg  # type: ignore[assignment]
        return partial(
            MemoryPoolingAttention,
            memory=cfg.memory and index % 2 == 0,  # memory attention in the even-indexed blocks (cfg)
            gap=cfg.memory_gap,
            attn_max_len=cfg.attn_max_len,
            compress_kernel=tuple(cfg.compress_kernel),
            compress_stride=tuple(cfg.compress_stride),
            memory_cache=cfg.memory_cache,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable and self.cfg.memory:
            raise ConfigError("gradient checkpointing with MeMViT memory: a recomputed forward would write the "
                              "memory cache twice")
        super().set_grad_checkpointing(enable)

    @property
    def uses_memory(self) -> bool:
        return bool(self.cfg.memory)

    def memory_layers(self) -> list[MemoryPoolingAttention]:
        return [b.attn for b in self.blocks if isinstance(b.attn, MemoryPoolingAttention) and b.attn.memory]

    def clear_memory(self) -> None:
        """Forget every cached clip (epoch start, before evaluation, a new set of videos)."""
        for layer in self.memory_layers():
            layer.clear_memory()

    def temporal_support(self, clip_seconds: float = 1.0) -> float:
        """Clips (times ``clip_seconds``) the output can depend on once the cache is full: each memory layer
        reaches ``(attn_max_len - 1) * N`` clips back, and memory was itself produced by layers that saw
        older memory, so the reach compounds over the memory layers."""
        cfg: MeMViTConfig = self.cfg  # type: ignore[assignment]
        reach = (cfg.attn_max_len - 1) * cfg.memory_gap * len(self.memory_layers())
        return (1 + reach) * clip_seconds

    def _set_video_ids(self, video_ids: torch.Tensor | None) -> None:
        if video_ids is not None:
            video_ids = torch.as_tensor(video_ids, dtype=torch.int64)
        for layer in self.memory_layers():
            layer._video_ids = None if video_ids is None else video_ids.to(layer.q.weight.device)

    def forward_features(
        self,
        x: torch.Tensor,
        return_grid: bool = False,
        token_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        video_ids: torch.Tensor | None = None,
    ):
        self._set_video_ids(video_ids)
        try:
            return super().forward_features(x, return_grid, token_mask, mask_token)
        finally:
            self._set_video_ids(None)

    def forward(self, x: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, video_ids=video_ids))


def build_memvit(cfg: MeMViTConfig) -> MeMViT:
    return MeMViT(cfg)


_VIDEO = dict(video=True, num_classes=400, head_pool="cls", cls_token=True, head_dropout=0.5, drop_path_rate=0.4)
MEMVIT_16 = MeMViTConfig(depth=16, embed_dim=96, num_heads=1, transitions=(1, 3, 14), num_frames=16, memory_gap=2,
                         **_VIDEO)
MEMVIT_24 = MeMViTConfig(depth=24, embed_dim=96, num_heads=1, transitions=(2, 5, 21), num_frames=32, memory_gap=3,
                         **_VIDEO)

register_model("memvit_16", MEMVIT_16, "MeMViT-16 16x4, gap2 memory (arXiv 2201.08383)")(build_memvit)
register_model("memvit_24", MEMVIT_24, "MeMViT-24 32x3, gap3 memory (arXiv 2201.08383)")(build_memvit)
