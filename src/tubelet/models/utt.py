"""UTT, the Unified Transformer Tracker (Ma et al., arXiv 2203.15175, CVPR 2022): one track transformer for
single- and multi-object tracking.

``UTT(reference, boxes, search)`` predicts, for each of N targets given by its box on the reference
image, ``iterations + 1`` boxes on the search image: the proposal decoder's and one per refinement of the
target transformer (7 with the default L = 6). Boxes are ``xyxy`` normalised to the search image
(``[0, 1]`` inside it); the reference boxes are ``xyxy`` in reference pixels.

MOT (METHODS.md section 9): ``UTT(reference, boxes, search, proposals)`` skips the proposal decoder: the
given proposals ``(B, N, 4)`` (normalised ``xyxy``: at inference the previous frame's boxes, in training the
ground truth plus noise) start the L refinements, and ``iterations`` boxes come out (i = 1..L). The same
weights serve both tasks; the single stride-16 map is used for MOT too (the paper's MOT RoIs pool strides
8-64 of an FPN).

1. Target decoder: ``F = RoIAlign(R, B)`` at 1x1 on the stride-16 map, Linear + LN to C; then
   ``target_decoder_layers`` blocks of cross-attention over the search features (sine positions) and FFN.
2. Proposal decoder: CorrAtt(F, S) = (F . S) * S, a conv-BN-ReLU tower 512 -> 512 -> 256 -> 128 -> 64, a
   1x1 conv to two corner heatmaps, a spatial soft-argmax: the proposal P in [0, 1]^4.
3. Target transformer, L iterations: ``S_roi = RoIAlign(S, P)`` at K x K; self-attention over the N
   targets; CorrAtt(F, S_roi) through FC K^2 C -> 2C -> C; FFN; a box head's deltas on P with weights
   (2, 2, 1, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.models.layers.boxes import decode_deltas, generalized_box_iou, roi_align, soft_argmax_2d
from tubelet.models.layers.pos_embed import sincos_2d
from tubelet.models.registry import create_model, register_model
from tubelet.models.resnet2d import ResNet2d

__all__ = ["UTT", "UTTConfig", "corr_att", "utt_box_loss"]


@dataclass(frozen=True)
class UTTConfig:
    backbone: str = "resnet50_image"  # the paper's R-50 (ablations: R-18, "resnet18_image")
    dim: int = 512  # C
    heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    iterations: int = 6  # L; with the proposal, L + 1 = 7 SOT boxes per step
    roi_size: int = 7  # K of the search RoI
    # decision: the paper's single target-decoder block (the code stacks 6)
    target_decoder_layers: int = 1
    delta_weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
    stride: int = 16  # SOT features: layer3 of the ResNet


class _CrossBlock(nn.Module):
    """``x = LN(x + CrossAttn(x, mem + pos, mem)); x = LN(x + FFN(x))``."""

    def __init__(self, c: int, heads: int, ffn: int, drop: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(c, heads, dropout=drop, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.ffn = nn.Sequential(nn.Linear(c, ffn), nn.ReLU(inplace=True), nn.Dropout(drop), nn.Linear(ffn, c))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, mem: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mem + pos, mem, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ffn(x)))


def corr_att(f: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """CorrAtt: the dot product of target features ``f`` ``(M, C)`` with each position of their maps
    ``s`` ``(M, C, H, W)``, broadcast back onto the map: ``(f . s) * s``."""
    return torch.einsum("mc,mchw->mhw", f, s)[:, None] * s


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _RefineBlock(nn.Module):
    """One target-transformer iteration: self-attention over targets, CorrAtt on the K x K RoI, FFN, deltas."""

    def __init__(self, cfg: UTTConfig) -> None:
        super().__init__()
        c, k = cfg.dim, cfg.roi_size
        self.self_attn = nn.MultiheadAttention(c, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm_a, self.norm_d, self.norm_f = nn.LayerNorm(c), nn.LayerNorm(c), nn.LayerNorm(c)
        self.fc = nn.Sequential(nn.Linear(k * k * c, 2 * c), nn.LayerNorm(2 * c), nn.ReLU(inplace=True),
                                nn.Linear(2 * c, c), nn.LayerNorm(c), nn.ReLU(inplace=True))
        self.ffn = nn.Sequential(nn.Linear(c, cfg.ffn_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_dim, c))
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Linear(c, c), nn.LayerNorm(c), nn.ReLU(inplace=True)]
        self.box_head = nn.Sequential(*layers, nn.Linear(c, 4))
        # deltas start at zero: an untrained iteration returns its input box
        nn.init.zeros_(self.box_head[-1].weight)
        nn.init.zeros_(self.box_head[-1].bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, f: torch.Tensor, s_roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, C = f.shape
        f = self.norm_a(f + self.drop(self.self_attn(f, f, f, need_weights=False)[0]))
        corr = corr_att(f.reshape(B * N, C), s_roi).flatten(1)  # (B*N, K*K*C)
        f = self.norm_d(f + self.drop(self.fc(corr)).view(B, N, C))
        f = self.norm_f(f + self.drop(self.ffn(f)))
        return f, self.box_head(f)


class UTT(nn.Module):
    def __init__(self, cfg: UTTConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        backbone = create_model(cfg.backbone, num_classes=0) if backbone is None else backbone
        if not isinstance(backbone, ResNet2d):
            raise ValueError(f"UTT backbone '{cfg.backbone}' is not a 2-D ResNet (resnet18_image, resnet50_image)")
        self.backbone = backbone
        ch = backbone.channels(cfg.stride)
        c = cfg.dim
        self.search_proj = nn.Conv2d(ch, c, 1)
        self.target_proj = nn.Sequential(nn.Linear(ch, c), nn.LayerNorm(c))
        self.target_decoder = nn.ModuleList(_CrossBlock(c, cfg.heads, cfg.ffn_dim, cfg.dropout)
                                            for _ in range(cfg.target_decoder_layers))
        self.proposal_tower = nn.Sequential(_conv_bn_relu(c, 512), _conv_bn_relu(512, 256), _conv_bn_relu(256, 128),
                                            _conv_bn_relu(128, 64), nn.Conv2d(64, 2, 1))
        self.refine = nn.ModuleList(_RefineBlock(cfg) for _ in range(cfg.iterations))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's stride-``cfg.stride`` map ``(B, ch, H/16, W/16)``."""
        return self.backbone.forward_features(images, self.cfg.stride)

    def target_features(self, ref_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``F``: RoIAlign at 1x1 of each target's box ``(B, N, 4)`` (reference pixels), Linear + LN."""
        B, N, _ = boxes.shape
        idx = torch.arange(B, device=boxes.device, dtype=boxes.dtype).repeat_interleave(N)[:, None]
        rois = torch.cat([idx, boxes.reshape(B * N, 4)], 1)
        f = roi_align(ref_map, rois, 1, spatial_scale=1.0 / self.cfg.stride, sampling_ratio=2, aligned=True)
        return self.target_proj(f.flatten(1)).view(B, N, -1)

    def track(self, target: torch.Tensor, search_map: torch.Tensor, search_size: tuple[int, int],
              proposals: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Boxes on the search image for target features ``F`` ``(B, N, C)`` (from :meth:`target_features`)
        and the search image's backbone map, normalised ``xyxy`` ``(B, N, 4)`` each: SOT (``proposals``
        None) ``iterations + 1`` of them, the proposal decoder's first; MOT (``proposals`` ``(B, N, 4)``
        given, normalised ``xyxy``) the ``iterations`` refinements of the proposals."""
        B, N, C = target.shape
        s = self.search_proj(search_map)  # (B, C, h, w)
        h, w = s.shape[-2:]
        mem = s.flatten(2).transpose(1, 2)  # (B, h*w, C)
        pos = sincos_2d(h, w, C, device=s.device).to(s.dtype)[None]
        f = target
        for block in self.target_decoder:
            f = block(f, mem, pos)
        H, W = search_size
        scale = torch.tensor([W, H, W, H], device=s.device, dtype=s.dtype)
        idx = torch.arange(B, device=s.device, dtype=s.dtype).repeat_interleave(N)[:, None]
        if proposals is None:
            s_rep = s.repeat_interleave(N, dim=0)  # (B*N, C, h, w)
            heat = self.proposal_tower(corr_att(f.reshape(B * N, C), s_rep))  # (B*N, 2, h, w)
            corners, _ = soft_argmax_2d(heat)  # (B*N, 2, 2): top-left and bottom-right (x, y) in [0, 1]
            box = corners.reshape(B, N, 4)
            outs = [box]
        else:
            if proposals.shape != (B, N, 4):
                raise ValueError(f"UTT.track: proposals of shape {tuple(proposals.shape)} for {B}x{N} targets")
            box, outs = proposals.to(s.dtype), []
        for block in self.refine:
            # decision: each iteration samples at the previous box without a gradient through it (as
            # iterative refinement in Deformable DETR); every output is still supervised
            ref = box.detach()
            rois = torch.cat([idx, (ref.reshape(B * N, 4) * scale)], 1)
            # the correlation sees only the K x K RoI of each target: O(K^2 N C) whatever the map's size
            s_roi = roi_align(s, rois, self.cfg.roi_size, spatial_scale=1.0 / self.cfg.stride,
                              sampling_ratio=2, aligned=True)
            f, deltas = block(f, s_roi)
            box = decode_deltas(deltas, ref, self.cfg.delta_weights)
            outs.append(box)
        return outs

    def forward(self, reference: torch.Tensor, boxes: torch.Tensor, search: torch.Tensor,
                proposals: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``reference``, ``search``: normalised images ``(B, 3, H, W)``; ``boxes``: ``(B, N, 4)`` xyxy in
        reference pixels; ``proposals`` (MOT): ``(B, N, 4)`` normalised xyxy on the search image."""
        target = self.target_features(self.features(reference), boxes)
        return self.track(target, self.features(search), tuple(search.shape[-2:]), proposals)


def utt_box_loss(outputs: list[torch.Tensor], target: torch.Tensor, giou_weight: float = 2.0,
                 l1_weight: float = 5.0, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``sum_i [2 GIoU_loss(B_i, B) + 5 L1(B_i, B)]`` over every output (SOT: the proposal included; MOT:
    the L refinements); boxes normalised ``xyxy`` ``(B, N, 4)``. Decision: the paper's sum over outputs (the
    code averages them). L1 sums the four coordinates and averages over boxes (DETR's normalisation);
    ``valid`` ``(B, N)`` bool leaves padded targets out of the mean."""
    w = torch.ones(target.shape[:-1], dtype=target.dtype, device=target.device) if valid is None \
        else valid.to(target.dtype)
    count = w.sum().clamp(min=1.0)
    # a padded slot's box is replaced by its target so that no NaN of a degenerate box can leak through the mask
    keep = w[..., None] > 0
    outputs = [torch.where(keep, b, target) for b in outputs]
    giou = torch.stack([((1 - generalized_box_iou(b, target, aligned=True)) * w).sum() / count for b in outputs])
    l1 = torch.stack([(F.l1_loss(b, target, reduction="none").sum(-1) * w).sum() / count for b in outputs])
    loss = giou_weight * giou.sum() + l1_weight * l1.sum()
    return {"loss": loss, "giou_loss": giou[-1].detach(), "l1_loss": l1[-1].detach(),
            "proposal_giou_loss": giou[0].detach()}


@register_model("utt_r18", UTTConfig(backbone="resnet18_image"), "UTT SOT/MOT tracker, ResNet-18 (the paper's ablations)")
@register_model("utt_r50", UTTConfig(), "UTT SOT/MOT tracker, ResNet-50 (arXiv 2203.15175)")
def build_utt(cfg: UTTConfig) -> UTT:
    return UTT(cfg)
