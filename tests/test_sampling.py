"""Clip samplers: exact counts and boundaries, spans, determinism, frame selection."""

from fractions import Fraction as Fr

import numpy as np
import pytest

from tubelet.data.sampling import (
    clip_duration,
    clip_frame_indices,
    constant_clips,
    expected_frames,
    multiview_clip_starts,
    multiview_clips,
    random_clip,
    repeated_clips,
    rho_clips,
    sample_rng,
    sequential_clips,
    source_frames_per_clip,
    stream_index,
    uniform_clips,
    uniform_subsample_indices,
    union_window,
)


def test_uniform_clips_9s_example():
    # METHODS.md section 0: "2 s uniform clips over 9 s: 4 clips, or 5 with back-padding".
    w = uniform_clips(9, 2)
    assert w == [(Fr(0), Fr(2)), (Fr(2), Fr(4)), (Fr(4), Fr(6)), (Fr(6), Fr(8))]
    wb = uniform_clips(9, 2, backpad_last=True)
    assert len(wb) == 5 and wb[-1] == (Fr(7), Fr(9))
    assert uniform_clips(8, 2, backpad_last=True) == uniform_clips(8, 2)  # no tail, no extra clip
    assert all(isinstance(s, Fr) and isinstance(e, Fr) for s, e in wb)


def test_multiview_clip_starts():
    # clip i starts at i * (L - l) / (V - 1): first at 0, last ends at L.
    w = multiview_clips(10, 2, 5)
    assert [s for s, _ in w] == [Fr(0), Fr(2), Fr(4), Fr(6), Fr(8)]
    assert w[-1][1] == 10
    assert multiview_clips(10, 2, 1) == [(Fr(4), Fr(6))]  # centre
    assert multiview_clips(Fr(1001, 100), Fr(64, 30), 3)[1][0] == (Fr(1001, 100) - Fr(64, 30)) / 2
    assert multiview_clips(1, 2, 3) == [(Fr(0), Fr(2))] * 3  # shorter than a clip: all at 0 (padded)


def test_multiview_clip_starts_in_frames():
    assert multiview_clip_starts(300, 64, 5) == [0, 59, 118, 177, 236]  # floor(236 / 4) = 59
    assert multiview_clip_starts(300, 64, 1) == [118]
    assert multiview_clip_starts(50, 64, 3) == [0, 0, 0]


def test_constant_clips():
    assert constant_clips(10, 2, 4) == [(Fr(0), Fr(2)), (Fr(2), Fr(4)), (Fr(4), Fr(6)), (Fr(6), Fr(8))]
    assert constant_clips(1, 2, 2) == [(Fr(0), Fr(2))] * 2


def test_random_clip_bounds_and_determinism():
    for i in range(200):
        s, e = random_clip(Fr(1001, 100), Fr(64, 30), sample_rng(0, 0, i))
        assert 0 <= s and e <= Fr(1001, 100) and e - s == Fr(64, 30)
    a = random_clip(10, 2, sample_rng(3, 1, 7))
    assert a == random_clip(10, 2, sample_rng(3, 1, 7))
    starts = {random_clip(10, 2, sample_rng(3, ep, 7))[0] for ep in range(10)}
    assert len(starts) > 5  # epochs give different clips
    assert random_clip(1, 2, sample_rng(0, 0, 0)) == (Fr(0), Fr(2))


def test_rho_span_respected():
    for i in range(200):
        w = rho_clips(30, 2, 4, sample_rng(0, 0, i), max_span=5)
        assert len(w) == 4
        assert max(e for _, e in w) - min(s for s, _ in w) <= 5
        assert all(0 <= s and e <= 30 and e - s == 2 for s, e in w)
    spans = [
        max(e for _, e in w) - min(s for s, _ in w)
        for w in (rho_clips(30, 2, 4, sample_rng(0, 0, i)) for i in range(200))
    ]
    assert max(spans) > 5  # global sampling without a span limit really spreads out
    assert rho_clips(30, 2, 3, sample_rng(1, 2, 3), 5) == rho_clips(30, 2, 3, sample_rng(1, 2, 3), 5)


def test_repeated_clips_union():
    w = repeated_clips(10, 2, 4, sample_rng(0, 0, 0))
    u = union_window(w)
    assert len(w) == 4 and u[0] == min(s for s, _ in w) and u[1] == max(e for _, e in w)


def test_sequential_clips_cover_video():
    w = list(sequential_clips(9, 2))
    assert [s for s, _ in w] == [0, 2, 4, 6, 8] and w[-1] == (Fr(8), Fr(10))
    assert len(list(sequential_clips(9, 2, stride=1))) == 9


def test_stream_index_mapping():
    # S = 2 streams, 3 iterations per epoch: slot 0 reads 0,1,2 and slot 1 reads 3,4,5.
    assert [stream_index(i, 2, 3) for i in range(6)] == [0, 3, 1, 4, 2, 5]


def test_t_tau_frames():
    assert clip_duration(16, 4) == Fr(64, 30)
    assert source_frames_per_clip(16, 4, 30) == 64
    assert source_frames_per_clip(16, 4, 15) == 32
    assert source_frames_per_clip(8, 8, Fr(30000, 1001)) == Fr(64 * 1000, 1001)


def test_uniform_subsample():
    assert uniform_subsample_indices(20, 10).tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 19]
    assert uniform_subsample_indices(64, 16).tolist() == np.trunc(np.linspace(0, 63, 16)).astype(int).tolist()


def test_padding_repeats_last_frame():
    # A 10-frame window that should hold 64 frames: the real frames keep their spacing.
    idx = clip_frame_indices(np.arange(10), 64, 16)
    assert idx.tolist() == [0, 4, 8, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    assert (
        clip_frame_indices(np.arange(64) + 5, 64, 16).tolist()
        == (np.trunc(np.linspace(0, 63, 16)).astype(int) + 5).tolist()
    )
    assert expected_frames((Fr(0), Fr(64, 30)), Fr(30)) == 64
    with pytest.raises(ValueError):
        clip_frame_indices(np.arange(0), 4, 4)
