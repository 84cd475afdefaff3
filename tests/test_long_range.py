"""The long-range synthetic task: only the first clip tells the label."""

from __future__ import annotations

import numpy as np
import pytest

from tubelet.data.online import OnlineClips
from tubelet.data.synthetic import COLOURS, LONG_RANGE_COLOURS, LongRangeVideos, render_long_video
from tubelet.errors import ConfigError


def test_only_the_first_clip_depends_on_the_label():
    frames, label = render_long_video(3, 7, num_clips=5, clip_frames=8, size=32, num_classes=4)
    assert frames.shape == (40, 32, 32, 3) and frames.dtype == np.uint8 and label == 7 % 4
    assert np.array_equal(frames, render_long_video(3, 7)[0])  # a pure function of (seed, index)
    for other in range(4):
        alt, lab = render_long_video(3, 7, label=other)
        assert lab == other
        np.testing.assert_array_equal(alt[8:], frames[8:])  # clips 1..4: identical whatever the label
        assert (alt[:8] != frames[:8]).any() == (other != label)


def test_the_cue_is_a_large_square_of_the_label_colour():
    frames, label = render_long_video(0, 2, size=48, num_classes=4)
    colour = (np.array(COLOURS[LONG_RANGE_COLOURS[label]]) * 255).round()
    hits = (np.abs(frames.astype(float) - colour).sum(-1) < 1).sum(axis=(1, 2))
    assert hits[:8].min() >= (48 / 3) ** 2 * 0.9  # the cue in every frame of the first clip
    assert hits[8:].max() <= 2 * (2 * 48 / 16 + 1) ** 2  # later: at most the two small distractors


def test_source_serves_the_online_order_and_checks_its_arguments():
    src = LongRangeVideos(6, seed=1, num_clips=3, clip_frames=4, size=16)
    data = OnlineClips(src, num_streams=2)
    item = data[0]
    assert item["video"].shape == (3, 4, 16, 16) and item["label"] == item["video_index"] % 4
    assert abs(float(src.clip(0, 1)["video"].mean())) < 3  # normalised
    with pytest.raises(ConfigError, match="2 to 8 classes"):
        render_long_video(0, 0, num_classes=9)
    with pytest.raises(ConfigError, match="at least 2 clips"):
        render_long_video(0, 0, num_clips=1)
