"""The online order of AVA keyframes for memory models (data.ava.online): training streams and streamed testing."""

import numpy as np
import pytest
import torch

from tubelet.data.datasets.ava import AVAKeyframeStreams, Keyframe
from tubelet.data.online import OnlineClips


class _Keyframes:
    """An AVADataset stand-in: keyframes and a sample per index."""

    def __init__(self, keyframes):
        self.keyframes = keyframes
        self.epoch = -1

    def __getitem__(self, i):
        return {"index": i}

    def set_epoch(self, epoch):
        self.epoch = epoch


def _kf(video, time):
    return Keyframe(video, float(time), np.zeros((1, 4)), np.zeros((1, 2), np.float32))


def test_streams_walk_each_video_in_time_order():
    # file order mixes videos and times
    kfs = [_kf("b", 905), _kf("a", 903), _kf("b", 902), _kf("a", 902), _kf("c", 910), _kf("a", 904)]
    src = AVAKeyframeStreams(_Keyframes(kfs))
    assert src.video_names == ["b", "a", "c"]  # by first appearance
    assert src.clips_per_video == [2, 3, 1]
    assert [kfs[src.clip(0, c)["index"]].time for c in range(2)] == [902, 905]
    assert [kfs[src.clip(1, c)["index"]].time for c in range(3)] == [902, 903, 904]
    assert src.clip(2, 0)["index"] == 4
    src.set_epoch(3)  # the crop jitter of the keyframes follows the epoch
    assert src.dataset.epoch == 3


def test_online_clips_forward_the_epoch_and_take_the_world_size():
    kfs = [_kf(v, t) for v in "abcde" for t in (902, 903, 904)]
    data = _Keyframes(kfs)
    online = OnlineClips(AVAKeyframeStreams(data), num_streams=2, seed=0)
    online.set_epoch(2)
    assert data.epoch == 2
    online.set_num_streams(4)  # 2 processes x batch 2
    assert online.num_streams == 4 and len(online) == 4 * online.steps
    assert online.steps == 4  # ceil(15 / 4)


@pytest.fixture(scope="module")
def synthetic_memvit(tmp_path_factory):
    from tubelet.config.loader import load_recipe

    root = tmp_path_factory.mktemp("ava_online")
    return load_recipe("ava_synthetic_memvit", [f"data.root={root}/data", f"run_dir={root}/run",
                                                "data.synthetic.num_videos=32", "data.batch_size=4"])


def test_training_set_is_the_online_order_of_the_keyframes(synthetic_memvit):
    from tubelet.data.builder import build_dataset

    ds = build_dataset(synthetic_memvit.data, "train", seed=0)
    assert isinstance(ds, OnlineClips) and ds.num_streams == 4
    kfs = ds.source.dataset.keyframes
    for s in range(ds.num_streams):
        rows = [ds[s * ds.steps + i] for i in range(ds.steps)]
        for prev, cur in zip(rows, rows[1:]):
            a, b = kfs[prev["index"]], kfs[cur["index"]]
            if cur["video_id"] == prev["video_id"]:  # same segment: same video, later keyframe
                assert a.video == b.video and b.time > a.time and not cur["new_video"]
            else:
                assert cur["new_video"]
    assert ds.num_classes == 9 and len(ds.keyframes) == len(kfs)


def test_streamed_test_scores_every_keyframe_once_with_memory(synthetic_memvit):
    """Each test keyframe is scored once; a video's first keyframe (empty memory) scores as the memory-free
    pass does, and later keyframes differ from it (their memory is read)."""
    from tubelet.data.builder import build_dataset
    from tubelet.engine.detection import _run
    from tubelet.methods import build_method

    torch.manual_seed(0)
    method = build_method(synthetic_memvit).eval()
    test = build_dataset(synthetic_memvit.data, "test", seed=0)
    with torch.inference_mode():
        i_on, b_on, s_on = _run(method, test, 4, 0, torch.device("cpu"), memory=True, online=True)
        i_off, b_off, s_off = _run(method, test, 4, 0, torch.device("cpu"), memory=True, online=False)
    assert len(i_on) == len(i_off) == sum(len(k.boxes) for k in test.keyframes)
    # the same rows in the same order (keyframe order, boxes in order): the evaluator breaks ties by row order
    assert np.array_equal(i_on, i_off) and np.array_equal(b_on, b_off)
    streams = AVAKeyframeStreams(test)
    first = np.isin(i_on, [o[0] for o in streams.order])
    assert first.any() and (~first).any()
    assert np.allclose(s_on[first], s_off[first], atol=1e-5)
    assert not np.allclose(s_on[~first], s_off[~first], atol=1e-4)
