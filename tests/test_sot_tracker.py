"""The SOT tracker's crop geometry end to end: a model that finds the bright square in its search crop
exactly must give back the square's frame boxes, so crop, resize and the inverse mapping are consistent."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tubelet.methods.utt import SOTTracker


class _BrightSquareFinder(nn.Module):
    """Stands in for UTT: its "features" are the crop itself and its box is that of the pixels above 0.5,
    normalised ``xyxy`` in the crop, as UTT's outputs are."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def target_features(self, ref_map: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return boxes

    def track(self, target: torch.Tensor, search_map: torch.Tensor, search_size: tuple[int, int]) -> list[torch.Tensor]:
        H, W = search_size
        on = search_map.mean(1) > 0.5  # (B, H, W)
        cols, rows = on.any(1), on.any(2)
        ar_w, ar_h = torch.arange(W), torch.arange(H)
        x1 = torch.where(cols, ar_w, W).min(1).values
        x2 = torch.where(cols, ar_w + 1, 0).max(1).values
        y1 = torch.where(rows, ar_h, H).min(1).values
        y2 = torch.where(rows, ar_h + 1, 0).max(1).values
        box = torch.stack([x1 / W, y1 / H, x2 / W, y2 / H], -1).float()[:, None]
        return [box, box]


def test_a_perfect_localiser_tracks_a_moving_square_to_within_a_pixel():
    n, size = 12, 40
    frames = np.zeros((n, 64, 80, 3), np.uint8)
    boxes = np.zeros((n, 4))
    for t in range(n):
        x, y = 8 + 4 * t, 12 + 2 * t  # 4 and 2 px per frame, well inside the 2x search area
        frames[t, y:y + 10, x:x + 14] = 255
        boxes[t] = [x, y, 14, 10]
    tracker = SOTTracker(_BrightSquareFinder(), size=size, search_factor=2.0, mean=(0, 0, 0), std=(1, 1, 1))
    tracker.init(frames[0], boxes[0])
    got = np.stack([boxes[0]] + [tracker.update(f) for f in frames[1:]])
    # a crop pixel is ceil(sqrt(14 * 10) * 2) / 40 = 0.6 frame pixels: the thresholded box is within one
    # or two of them; a wrong offset, scale or half-pixel shift in the mapping would drift over 11 updates
    np.testing.assert_allclose(got, boxes, atol=1.2)
