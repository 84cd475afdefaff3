"""Text-to-video and video-to-text retrieval recall@K (CLIP, arXiv 2103.00020, Sec. 3.2; the MSR-VTT
protocol of video-text models): for each query, is a true match among the K most similar items?

``sim (N_video, N_text)`` holds the similarities; ``text_to_video (N_text,)`` names each caption's video
(default: caption i describes video i). A video may have several captions: video-to-text counts a hit
when any of its captions is in the top K. Ties are broken toward the lower index (``torch.topk``).
"""

from __future__ import annotations

from typing import Sequence

import torch

from tubelet.errors import TubeletError


def retrieval_recall(sim: torch.Tensor, text_to_video: torch.Tensor | None = None,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """``{"t2v_r1": ..., "v2t_r1": ..., ...}`` as fractions in [0, 1], K capped at the candidates."""
    if sim.ndim != 2:
        raise TubeletError(f"retrieval needs a (videos, texts) similarity matrix, got shape {tuple(sim.shape)}")
    nv, nt = sim.shape
    owner = torch.arange(nt) if text_to_video is None else text_to_video.long().view(-1).cpu()
    if owner.numel() != nt:
        raise TubeletError(f"text_to_video names {owner.numel()} captions for {nt} columns")
    if nt == 0 or nv == 0 or int(owner.min()) < 0 or int(owner.max()) >= nv:
        raise TubeletError(f"every caption must name one of the {nv} videos")
    sim = sim.float().cpu()
    out: dict[str, float] = {}
    # text -> video: rank of the caption's own video among all videos
    t2v = sim.t().topk(min(max(ks), nv), dim=1).indices  # (nt, k)
    t2v_hit = t2v == owner.view(-1, 1)
    # video -> text: is any caption of the video among its top-k captions
    v2t = sim.topk(min(max(ks), nt), dim=1).indices  # (nv, k)
    v2t_hit = owner[v2t] == torch.arange(nv).view(-1, 1)
    has_text = torch.zeros(nv, dtype=torch.bool)
    has_text[owner] = True  # videos without a caption are no query for video -> text
    for k in ks:
        out[f"t2v_r{k}"] = float(t2v_hit[:, : min(k, nv)].any(dim=1).float().mean())
        out[f"v2t_r{k}"] = float(v2t_hit[has_text, : min(k, nt)].any(dim=1).float().mean())
    return out
