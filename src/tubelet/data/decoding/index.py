"""The frame index table of a stream, built once per file from packet timestamps (cached per process)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class _Index:
    """Frame index table of one stream: sorted PTS, keyframe PTS, timing and codec facts."""

    pts: np.ndarray  # int64, sorted presentation timestamps of the frames that decode
    key_pts: np.ndarray  # int64, sorted PTS of keyframe packets
    time_base: Fraction
    fps: Fraction
    codec: str
    coded_width: int
    coded_height: int
    # MPEG-4 Part 2 "packed B-frames" (DivX/Xvid AVI): the decoder outputs frames in display order,
    # but the PTS it attaches to them come from the packets and are swapped in pairs (1, 4, 3, 6, 5,
    # ...), so sorting by them would scramble the clip. In such streams a decoded frame is named by
    # its position in the decoder's output, counted from a keyframe whose position is known.
    output_order: bool = False
    # Display position of each keyframe in ``key_pts`` (packed streams only). A keyframe's stamp
    # alone does not give it: the B-frames packed with an I-frame are shown before it, so it sits
    # that many places later than its stamp sorts.
    key_pos: np.ndarray | None = None


# A VOP (video object plane, one coded frame) start code; a packet with two of them is packed.
_MPEG4_VOP_START = b"\x00\x00\x01\xb6"


_INDEX_CACHE: "OrderedDict[tuple, _Index]" = OrderedDict()
_ROTATION_CACHE: dict[tuple, int] = {}
_INDEX_CACHE_SIZE = 4096
_INDEX_LOCK = threading.Lock()
