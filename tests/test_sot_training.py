"""UTT's SOT training data (reference and jittered search crops) and the method built from a recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TRACKING
from tubelet.config import load_recipe
from tubelet.data.builder import build_dataset
from tubelet.data.datasets.tracking import SOTPairDataset, SOTSequence, box_in_crop, crop_box, crop_frame
from tubelet.errors import ConfigError, DataError
from tubelet.methods import build_method

SMALL = ["data.crop_size=64", "data.synthetic.size=48", "data.synthetic.num_videos=16", "data.sot.samples_per_epoch=8",
         "method.dim=32", "method.heads=2", "method.ffn_dim=64", "method.iterations=6", "data.batch_size=2"]


def test_crop_frame_resamples_exactly_and_pads_with_the_mean():
    frame = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    same = crop_frame(frame, np.array([4.0, 4.0, 8.0]), 8, mean, std)
    want = (torch.from_numpy(frame).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) \
        / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(same, want, rtol=1e-5, atol=1e-5)
    # the left half of a crop centred on the frame's left edge lies outside: the mean colour, 0
    half = crop_frame(frame, np.array([0.0, 4.0, 8.0]), 8, mean, std)
    assert half[:, :, :4].abs().max() == 0 and half[:, :, 5:].abs().min() >= 0
    torch.testing.assert_close(half[:, :, 4:], want[:, :, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(crop_box(np.array([10.0, 20, 4, 9]), 2.0), [12.0, 24.5, 12.0])
    np.testing.assert_allclose(box_in_crop(np.array([10.0, 20, 4, 9]), np.array([12.0, 24.5, 12.0]), 24),
                               [8.0, 3.0, 16.0, 21.0])


def _moving_square(n: int = 10) -> SOTSequence:
    frames = np.zeros((n, 64, 64, 3), np.uint8)
    boxes = np.zeros((n, 4))
    for t in range(n):
        x = 10 + 3 * t
        frames[t, 20:30, x:x + 10] = 255
        boxes[t] = [x, 20, 10, 10]
    return SOTSequence("square", frames, boxes, np.ones(n, bool))


def test_pairs_without_jitter_centre_the_target_and_draws_follow_seed_epoch_index():
    ds = SOTPairDataset([_moving_square()], size=32, samples_per_epoch=4, search_factor=2.0, centre_jitter=0.0,
                        scale_jitter=0.0, max_gap=3, mean=(0, 0, 0), std=(1, 1, 1))
    s = ds[1]
    torch.testing.assert_close(s["search_box"], torch.tensor([0.25, 0.25, 0.75, 0.75]))
    torch.testing.assert_close(s["reference_box"], torch.tensor([8.0, 8.0, 24.0, 24.0]))
    # the white square fills the box of both crops
    assert s["search"][:, 10:22, 10:22].min() == 1.0 and s["reference"][:, 10:22, 10:22].min() == 1.0
    jit = SOTPairDataset([_moving_square()], 32, 4, 2.0, 1.0, 0.3, 3, seed=5)
    a, b = jit[2], jit[2]
    torch.testing.assert_close(a["search"], b["search"])
    jit.set_epoch(1)
    assert not torch.equal(jit[2]["search_box"], a["search_box"])
    with pytest.raises(DataError, match="no sequence has a frame with a visible target"):
        SOTPairDataset([SOTSequence("x", np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 4)), np.zeros(2, bool))], 32, 4)


def test_the_recipe_builds_pairs_of_the_synthetic_set_and_of_a_vot_folder():
    r = load_recipe("utt_synthetic", SMALL)
    ds = build_dataset(r.data, "train", seed=0)
    assert len(ds) == 8 and len(ds.sequences) == len(range(12))
    s = ds[0]
    assert s["search"].shape == (3, 64, 64) and s["search_box"].shape == (4,)
    bag = build_dataset(load_recipe("utt_synthetic", SMALL + [f"data.train={TRACKING / 'bag'}"]).data, "train")
    assert len(bag.sequences) == 1 and bag.sequences[0].boxes.shape == (196, 4)
    with pytest.raises(DataError, match="neither 'synthetic' nor a folder"):
        build_dataset(load_recipe("utt_synthetic", SMALL + ["data.train=/nonexistent/seq"]).data, "train")


def test_the_method_trains_on_a_batch_and_gives_seven_boxes():
    r = load_recipe("utt_synthetic", SMALL)
    torch.manual_seed(0)
    method = build_method(r)
    ds = build_dataset(r.data, "train", seed=0)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    outs = method.utt(batch["reference"], batch["reference_box"][:, None], batch["search"])
    assert len(outs) == 7
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    first = None
    for _ in range(8):  # one batch, overfitted: the loss falls
        out = method(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["loss"].item() if first is None else first
    assert out["loss"].item() < first
    assert set(out) >= {"loss", "giou_loss", "l1_loss", "proposal_giou_loss", "iou"}
    with pytest.raises(ConfigError, match="model.name 'vit_tiny' is not a 2-D ResNet"):
        build_method(load_recipe("utt_synthetic", SMALL + ["model.name=vit_tiny"]))


def test_fit_from_the_cli_on_got10k_layout_sequences(tmp_path):
    """Item 5: ``data.train`` a folder of GOT-10k sequence folders (frames, ``groundtruth.txt``,
    ``absence.label``) trains from ``tubelet fit`` like the synthetic set, pairs drawn from visible frames only."""
    import json

    from PIL import Image

    from tubelet.cli.main import main
    from tubelet.config.schema import SyntheticConfig
    from tubelet.data.synthetic import SyntheticSource

    src = SyntheticSource(SyntheticConfig(num_videos=4, frames=6, size=48, max_objects=1))
    root = tmp_path / "got10k"
    written = []
    for i in range(2):
        clip, seq = src.clip(i), root / f"GOT-10k_Train_{i + 1:06d}"
        seq.mkdir(parents=True)
        for t, frame in enumerate(clip.frames):
            Image.fromarray(frame).save(seq / f"{t + 1:08d}.png")
        b = clip.boxes[:, 0].astype(np.float64)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
        (seq / "groundtruth.txt").write_text("".join(f"{x:.3f},{y:.3f},{w:.3f},{h:.3f}\n" for x, y, w, h in xywh))
        absent = np.zeros(len(xywh), int)
        absent[-1] = 1  # the last frame marked absent: never a reference or search frame
        (seq / "absence.label").write_text("".join(f"{a}\n" for a in absent))
        written.append(xywh)
    run = tmp_path / "run"
    args = [a for a in SMALL if not a.startswith("data.synthetic")] + [
        "trainer.max_steps=2", "trainer.log_every_n_steps=1", "trainer.accelerator=cpu", f"data.train={root}",
        f"run_dir={run}"]
    assert main(["fit", "utt_synthetic", *args]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and np.isfinite(metrics["train/loss"])
    ds = build_dataset(load_recipe(run / "config.yaml").data, "train")
    assert [s.name for s in ds.sequences] == ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    for s, xywh in zip(ds.sequences, written):
        np.testing.assert_allclose(s.boxes, xywh, atol=1e-3)
        assert not s.visible[-1]
        np.testing.assert_array_equal(s.visible[:-1], (xywh[:-1, 2] > 0) & (xywh[:-1, 3] > 0))
