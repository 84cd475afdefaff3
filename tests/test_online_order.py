"""The online data order of memory models: streams in time order, per-epoch reshuffle, resume, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubelet.data.online import OnlineClips, online_layout
from tubelet.engine.callbacks import ClearMemory
from tubelet.engine.datamodule import (
    OnlineOrderSampler,
    ResumableDataLoader,
    SeededCollate,
    SeededDataset,
    TubeletDataModule,
)
from tubelet.errors import ConfigError


class Toy:
    """Videos whose clip ``c`` of video ``v`` is a constant ``100 v + c`` clip."""

    clips_per_video = [3, 5, 2, 4, 1, 6]

    def clip(self, video: int, clip: int) -> dict:
        return {"video": torch.full((1, 1, 1, 1), float(100 * video + clip)), "label": video}


def loader(ds: OnlineClips, batch: int, sampler: OnlineOrderSampler | None = None) -> ResumableDataLoader:
    sampler = sampler or OnlineOrderSampler(ds, batch, seed=0)
    return ResumableDataLoader(SeededDataset(ds), batch_size=batch, sampler=sampler, drop_last=True,
                               collate_fn=SeededCollate(torch.utils.data.default_collate))


def walk(dl: ResumableDataLoader) -> list[dict]:
    return [dict(b) for b in dl]


def test_each_slot_walks_one_video_in_time_order():
    ds = OnlineClips(Toy(), num_streams=3, seed=5)
    total = sum(Toy.clips_per_video)
    assert ds.steps == 7 and len(ds) == 21
    batches = walk(loader(ds, 3))
    assert len(batches) == 7 and all(b["video"].shape[0] == 3 for b in batches)
    seen = []
    for s in range(3):
        prev = None
        for b in batches:
            v, c, vid, new = (int(b["video_index"][s]), int(b["clip_index"][s]), int(b["video_id"][s]),
                              bool(b["new_video"][s]))
            assert float(b["video"][s].flatten()[0]) == 100 * v + c
            if prev is not None and prev[2] == vid:  # same segment: the next clip of the same video
                assert (v, c) == (prev[0], prev[1] + 1) and not new
            else:
                assert new and (c == 0 or prev is None)
            prev = (v, c, vid)
            seen.append((v, c))
    # every clip of the epoch once, plus the wrap-around that fills the last slot
    assert set(seen) == {(v, c) for v, n in enumerate(Toy.clips_per_video) for c in range(n)}
    assert len(seen) == 21 and len(seen) - len(set(seen)) == 21 - total


def test_videos_reshuffled_per_epoch_with_the_epoch_seed():
    first = lambda e: [int(v) for v in online_layout(Toy.clips_per_video, 1, 3, e)[0]]  # noqa: E731
    assert first(0) == first(0)
    assert first(0) != first(1)
    order0 = list(dict.fromkeys(first(0)))
    assert sorted(order0) == list(range(6))
    ds = OnlineClips(Toy(), 2, seed=3)
    sampler = OnlineOrderSampler(ds, 2, seed=3)
    a = walk(loader(ds, 2, sampler))
    sampler.set_epoch(1)
    b = walk(loader(ds, 2, sampler))
    assert [x["video_index"].tolist() for x in a] != [x["video_index"].tolist() for x in b]
    ids_a = {i for x in a for i in x["video_id"].tolist()}
    ids_b = {i for x in b for i in x["video_id"].tolist()}
    assert not ids_a & ids_b  # no id repeats across epochs, so memory never spans them


def test_wrap_into_the_same_video_starts_a_new_segment():
    class One:
        clips_per_video = [5]

        def clip(self, video, clip):
            return {"video": torch.zeros(1), "label": 0}

    video, clip, segment, steps = online_layout([5], 2, 0, 0)
    assert steps == 3 and clip.tolist() == [0, 1, 2, 3, 4, 0]
    assert segment.tolist() == [0, 0, 0, 1, 1, 2]  # stream 1: clips 3, 4 then the wrap to clip 0


def test_exact_resume_keeps_the_position_inside_the_streams():
    ds = OnlineClips(Toy(), 3, seed=1)
    full = walk(loader(ds, 3))
    s1 = OnlineOrderSampler(ds, 3, seed=1)
    it = iter(loader(ds, 3, s1))
    for _ in range(4):
        next(it)
    s1.consumed = 4 * 3  # what the training loop's DataPosition callback sets
    state = s1.state_dict()
    ds2 = OnlineClips(Toy(), 3, seed=1)
    s2 = OnlineOrderSampler(ds2, 3, seed=1)
    s2.load_state_dict(state)
    rest = walk(loader(ds2, 3, s2))
    assert len(rest) == 3
    for a, b in zip(full[4:], rest):
        for key in ("video", "video_id", "clip_index", "video_index", "new_video"):
            assert torch.equal(a[key], b[key])


def test_streams_must_match_the_slots():
    with pytest.raises(ConfigError, match="3 streams but the loader has 1 process"):
        OnlineOrderSampler(OnlineClips(Toy(), 3), 2)


class Shuffled(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"video": torch.zeros(1), "label": 0}


def test_a_shuffling_loader_with_memory_on_is_refused():
    dm = TubeletDataModule(Shuffled(), batch_size=2, memory=True)
    with pytest.raises(ConfigError, match="shuffles clips .* while the model's memory is on"):
        dm.train_dataloader()
    TubeletDataModule(Shuffled(), batch_size=2, memory=False).train_dataloader()  # fine without memory
    dl = TubeletDataModule(OnlineClips(Toy(), 2), batch_size=2, memory=True).train_dataloader()
    assert isinstance(dl.resumable_sampler, OnlineOrderSampler)


def test_memory_cleared_at_epoch_start_and_around_evaluation():
    from tubelet.models import create_model

    model = create_model("memvit_16", num_classes=3, depth=2, transitions=(1,), num_frames=4, img_size=32,
                         drop_path_rate=0.0, head_dropout=0.0).eval()
    holder = torch.nn.Module()
    holder.backbone = model
    cb = ClearMemory()
    for hook in (cb.on_train_epoch_start, cb.on_validation_start, cb.on_validation_end):
        with torch.no_grad():
            model(torch.randn(1, 3, 4, 32, 32))
        assert model.memory_layers()[0].cached_entries
        hook(None, holder)
        assert not model.memory_layers()[0].cached_entries


def test_supervised_passes_video_ids_to_a_memory_backbone():
    from tubelet.methods.supervised import Supervised
    from tubelet.models import create_model

    kw = dict(num_classes=3, depth=2, transitions=(1,), num_frames=8, img_size=32, kv_stride=(1, 2, 2),
              drop_path_rate=0.0, head_dropout=0.0)
    torch.manual_seed(0)
    model = create_model("memvit_16", **kw).eval()
    free = create_model("memvit_16", **{**kw, "memory": False}).eval()
    free.load_state_dict(model.state_dict(), strict=False)
    method = Supervised(model)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 3, 8, 32, 32, generator=g) for _ in range(4)]
    with torch.no_grad():
        for x in xs[:3]:
            method({"video": x, "label": torch.zeros(2, dtype=torch.long), "video_id": torch.tensor([0, 1])})
        logits = method.classify(xs[3], torch.tensor([0, 5]))  # slot 1 starts a new video
        assert (logits[0] - free(xs[3])[0]).abs().max() > 1e-4
        np.testing.assert_allclose(logits[1].numpy(), free(xs[3])[1].numpy(), atol=1e-5)


def test_batches_without_stream_ids_never_see_memory():
    from tubelet.methods.supervised import Supervised
    from tubelet.models import create_model

    kw = dict(num_classes=3, depth=2, transitions=(1,), num_frames=8, img_size=32, kv_stride=(1, 2, 2),
              drop_path_rate=0.0, head_dropout=0.0)
    torch.manual_seed(0)
    model = create_model("memvit_16", **kw).eval()
    free = create_model("memvit_16", **{**kw, "memory": False}).eval()
    free.load_state_dict(model.state_dict(), strict=False)
    method = Supervised(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in (4, 4, 4, 3):  # evaluation batches of unrelated videos, the last one smaller
            x = torch.randn(b, 2, 3, 8, 32, 32, generator=g)  # (B, views, C, T, H, W)
            out = method({"video": x, "label": torch.zeros(b, dtype=torch.long)})
            ref = free(x.flatten(0, 1)).argmax(-1).eq(0).float().mean()
            assert float(out["acc"]) == pytest.approx(float(ref))


def _memvit_recipe(tmp_path):
    import yaml

    from tubelet.config import load_recipe

    raw = {
        "model": {"name": "memvit_16", "num_frames": 4, "img_size": 16, "num_classes": 4,
                  "overrides": {"depth": 2, "transitions": [1], "embed_dim": 16, "kv_stride": [1, 2, 2],
                                "head_dropout": 0.0}},
        "data": {"kind": "synthetic", "num_frames": 4, "crop_size": 16, "batch_size": 2,
                 "synthetic": {"num_videos": 8, "num_classes": 4, "size": 16, "frames": 8}},
        "method": {"name": "supervised"},
        "optim": {"lr": 1.0e-3, "warmup_steps": 1},
        "trainer": {"max_steps": 4, "checkpoint_every_n_steps": 2, "num_threads": 1, "enable_progress_bar": False,
                    "log_every_n_steps": 1},
        "run_dir": str(tmp_path / "run"),
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    return load_recipe(tmp_path / "r.yaml", [])


def test_fit_trains_a_memory_model_in_the_online_order_and_refuses_shuffling(tmp_path):
    from tubelet.data.synthetic import LongRangeVideos
    from tubelet.engine import fit

    recipe = _memvit_recipe(tmp_path)
    seen = []

    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((batch["video_id"].tolist(), batch["clip_index"].tolist()))

    train = OnlineClips(LongRangeVideos(4, num_clips=3, clip_frames=4, size=16), num_streams=2)
    result = fit(recipe, datasets={"train": train, "val": None}, callbacks=[Record()])
    assert (tmp_path / "run" / "method.safetensors").is_file() and result is not None
    assert [c for _, c in seen] == [[0, 0], [1, 1], [2, 2], [0, 0]]  # each slot walks its video in order
    assert seen[0][0] == seen[1][0] == seen[2][0] and seen[3][0] != seen[0][0]
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="while the model's memory is on"):
        fit(_memvit_recipe(tmp_path / "b"), datasets={"train": Shuffled(), "val": None})
