"""Tubelet embedding: non-overlapping space-time patches to tokens (MAE-ST, arXiv 2205.09113, Sec. 3).

A clip ``(B, C, T, H, W)`` is cut into ``pt x ph x pw`` cubes, each linearly projected to ``D``
dimensions (a Conv3d with kernel = stride). Tokens are flattened time-slowest:
``n = t * H' * W' + h * W' + w``.

The projection is stored as the Conv3d (its ``proj.weight`` of shape ``(D, C, pt, ph, pw)`` is what
checkpoints hold) but computed as cut-into-cubes then one matrix multiply: the same arithmetic, and on
CPU the Conv3d's backward is about 8x slower than the GEMM's (about 220 ms vs 26 ms per ViT-B 16x224
step), since kernel = stride makes the convolution a plain GEMM that the convolution kernels do not
exploit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(s) for s in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 sizes (t, h, w), got {v}")
    return t  # type: ignore[return-value]


class PatchEmbed3d(nn.Module):
    """Conv3d tubelet embedding, ``(B, C, T, H, W) -> (B, N, D)`` with ``N = T'H'W'``.

    ``patch_size`` is ``(pt, ph, pw)``; MAE-ST uses ``(2, 16, 16)`` for every model size, so a
    16x224x224 clip gives 8x14x14 = 1568 tokens. Sizes must divide exactly: silently dropping the
    trailing frames or pixels would change what the model sees without telling anyone.
    """

    def __init__(
        self,
        patch_size: int | tuple[int, int, int] = (2, 16, 16),
        in_chans: int = 3,
        embed_dim: int = 768,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size = _triple(patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def grid_size(self, T: int, H: int, W: int) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` for a ``T x H x W`` clip; raises if a size does not divide."""
        pt, ph, pw = self.patch_size
        if T % pt or H % ph or W % pw:
            raise ValueError(
                f"clip of {T}x{H}x{W} (frames x height x width) is not divisible by the "
                f"tubelet size {pt}x{ph}x{pw}"
            )
        return (T // pt, H // ph, W // pw)

    def _check(self, x: torch.Tensor) -> tuple[int, int, int]:
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a clip batch (B, {self.in_chans}, T, H, W), got shape {tuple(x.shape)}")
        return self.grid_size(*x.shape[-3:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens: ``(B, C, T, H, W) -> (B, T'H'W', D)``, equal to the Conv3d's output."""
        return self._project(self.patchify(x))

    def _project(self, patches: torch.Tensor) -> torch.Tensor:
        return F.linear(patches, self.proj.weight.reshape(self.embed_dim, -1), self.proj.bias)

    def _cubes(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, T', H', W', C, pt, ph, pw)``, a view."""
        t, h, w = self._check(x)
        pt, ph, pw = self.patch_size
        B, C = x.shape[:2]
        return x.reshape(B, C, t, pt, h, ph, w, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Raw cubes ``(B, N, C*pt*ph*pw)``, each flattened in the Conv3d weight's (C, pt, ph, pw) order."""
        v = self._cubes(x)
        return v.reshape(*v.shape[:1], -1, math.prod(v.shape[4:]))

    def forward_subset(self, x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Embed only the tokens ``keep_idx (B, K)``: ``-> (B, K, D)``.

        Equal to ``forward(x)`` gathered at ``keep_idx``, but projects K instead of N cubes (the
        MAE encoder keeps 10% of them).
        """
        v = self._cubes(x)  # (B, T', H', W', C, pt, ph, pw)
        h, w = v.shape[2:4]
        # Index the strided view: only the K kept cubes are copied, not the whole clip.
        b = torch.arange(v.shape[0], device=keep_idx.device).unsqueeze(1)
        patches = v[b, keep_idx // (h * w), (keep_idx // w) % h, keep_idx % w]  # (B, K, C, pt, ph, pw)
        return self._project(patches.flatten(2))

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}"
