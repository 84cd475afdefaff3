"""The frame rule that splits one decoded clip into SlowFast's two pathways (arXiv 1812.03982, Sec. 3),
shared by the data pipeline (``data.transforms.PackPathway``) and the model (``models.slowfast``) so
that both select the same frames."""

from __future__ import annotations

import torch

__all__ = ["slow_frame_indices"]


def slow_frame_indices(num_fast: int, alpha: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Indices of the Slow pathway's ``num_fast // alpha`` frames among the Fast clip's ``num_fast``:
    ``linspace(0, num_fast - 1, num_fast // alpha)`` truncated to integers, the rule of PySlowFast's
    ``pack_pathway_output`` and PyTorchVideo's ``PackPathway`` (first and last frame always kept; 32
    frames at alpha 4 give 0, 4, 8, 13, 17, 22, 26, 31). ``num_fast`` must be a positive multiple of
    ``alpha``, else ``ValueError``."""
    if alpha < 1 or num_fast < alpha or num_fast % alpha:
        raise ValueError(f"a SlowFast clip needs a positive multiple of alpha={alpha} frames, got {num_fast}")
    return torch.linspace(0, num_fast - 1, num_fast // alpha, device=device).long()
