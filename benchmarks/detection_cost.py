"""GMACs of a backbone plus the AVA RoI head (and MeMViT's box block) with 1, 10 and 100 boxes per clip.

Counted with tubelet's FLOP counter (``tubelet.flops``, 1 multiply-add = 1) on the meta device: no compute,
so the numbers do not depend on the machine. ``python benchmarks/detection_cost.py``
"""

from __future__ import annotations

import torch

from tubelet.flops import count_flops
from tubelet.models.detection import BoxMemoryBlock, RoIHead
from tubelet.models.registry import create_model

MODELS = (("mvitv2_s", 16, 0), ("memvit_16", 16, 0), ("memvit_16", 16, 1), ("vit_base", 16, 0))


def cost(name: str, frames: int, box_blocks: int, counts=(1, 10, 100)) -> tuple[float, list[float]]:
    """(backbone GMACs, [backbone + head GMACs per box count]). The backbone is counted on the meta device; the
    head on CPU on a random feature map of the backbone's output shape (RoIAlign's adaptive sampling reads the
    box sizes, which meta tensors do not have)."""
    kw = {"memory": False} if name.startswith("memvit") else {}
    with torch.device("meta"):
        backbone = create_model(name, num_classes=0, num_frames=frames, img_size=224, **kw).eval()
        bb = count_flops(backbone, torch.empty(1, 3, frames, 224, 224)).gmacs
    dim = int(backbone.norm.normalized_shape[0])
    t, h, w = backbone.token_grids(frames, 224, 224)[1]
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(BoxMemoryBlock(dim, 8, memory=False) for _ in range(box_blocks))
    head = HeadOnly(RoIHead(dim, 80), blocks).eval()
    fmap = torch.randn(1, dim, t, h, w)
    out = []
    for n in counts:
        xy = torch.rand(1, n, 2) * 150
        boxes = torch.cat([xy, xy + 20 + torch.rand(1, n, 2) * 50], -1)
        out.append(bb + count_flops(head, (fmap, boxes, torch.ones(1, n, dtype=torch.bool))).gmacs)
    return bb, out


class HeadOnly(torch.nn.Module):
    """What ActionDetector runs after the backbone's feature map."""

    def __init__(self, head: RoIHead, blocks: torch.nn.ModuleList) -> None:
        super().__init__()
        self.head, self.blocks = head, blocks

    def forward(self, fmap, boxes, mask):
        f = self.head.pool(fmap, boxes, (224, 224))
        for b in self.blocks:
            f = b(f, mask)
        return self.head.classify(f)


def main() -> None:
    print(f"{'model':<16} {'backbone':>9} {'1 box':>9} {'10 boxes':>9} {'100 boxes':>9} {'head@100/backbone':>18}")
    for name, frames, blocks in MODELS:
        bb, rows = cost(name, frames, blocks)
        label = name + (" +box" if blocks else "")
        print(f"{label:<16} {bb:>9.3f} " + " ".join(f"{t:>9.3f}" for t in rows) + f" {(rows[2] - bb) / bb:>17.2%}")


if __name__ == "__main__":
    main()
