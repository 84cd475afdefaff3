"""UTT's MOT training pairs (proposals = ground truth + Gaussian noise with a minimum IoU), the MOT step of
the method, and unified training: SOT and MOT batches alternating (even steps SOT, odd MOT), each task
in its own order, resumed exactly mid-alternation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tubelet.config import load_recipe
from tubelet.data.alternating import AlternatingTasks
from tubelet.data.builder import build_dataset
from tubelet.data.datasets.tracking import MOTPairDataset, _xyxy_iou, letterbox, noisy_proposals, synthetic_mot_sequence
from tubelet.errors import ConfigError
from tubelet.methods import build_method

SMALL = ["data.crop_size=64", "data.synthetic.size=48", "data.synthetic.num_videos=16", "data.synthetic.frames=8",
         "data.sot.samples_per_epoch=6", "data.mot.samples_per_epoch=4", "data.batch_size=2", "method.dim=32",
         "method.heads=2", "method.ffn_dim=64", "method.iterations=2"]


def test_noisy_proposals_keep_the_minimum_iou_and_no_noise_is_the_box():
    rng = np.random.default_rng(0)
    boxes = np.tile([[10.0, 10, 30, 50]], (2000, 1))
    prop = noisy_proposals(boxes, rng, sigma=0.5, min_iou=0.3)
    iou = _xyxy_iou(prop, boxes)
    assert iou.min() >= 0.3 and (iou < 0.99).mean() > 0.9  # all above the bound, nearly all moved
    np.testing.assert_array_equal(noisy_proposals(boxes[:3], rng, sigma=0.0), boxes[:3])
    # centre noise is relative to the size: for a 20 x 40 box the y-centre spreads twice as far as x
    small = noisy_proposals(boxes, np.random.default_rng(1), sigma=0.05, min_iou=0.0)
    c = (small[:, :2] + small[:, 2:]) / 2
    assert 1.7 < c[:, 1].std() / c[:, 0].std() < 2.3


def test_letterbox_keeps_the_aspect_and_pads_at_the_bottom_right():
    frame = np.full((20, 40, 3), 255, np.uint8)
    img, scale = letterbox(frame, 80, (0, 0, 0), (1, 1, 1))
    assert scale == 2.0 and img.shape == (3, 80, 80)
    # inside the frame it is the frame, below it the mean (0), with crop_frame's half-pixel blend at the edge
    assert img[:, 1:39, 1:79].min() == 1.0 and img[:, 41:].abs().max() == 0.0


def test_mot_pairs_hold_the_targets_of_both_frames():
    from tubelet.config.schema import SyntheticConfig
    from tubelet.data.synthetic import SyntheticSource

    clip = SyntheticSource(SyntheticConfig(num_videos=4, frames=6, size=48, min_objects=3, max_objects=3)).clip(0)
    seq = synthetic_mot_sequence(clip, "clip0")
    ds = MOTPairDataset([seq], size=96, samples_per_epoch=8, max_objects=4, max_gap=1, proposal_sigma=0.0,
                        mean=(0, 0, 0), std=(1, 1, 1))
    s = ds[3]
    assert s["reference"].shape == s["search"].shape == (3, 96, 96)
    m = int(s["valid"].sum())
    assert m == (clip.ids[0] >= 0).sum() == 3 and not s["valid"][m:].any()
    # recover which frames were drawn: the reference boxes are clip boxes at scale 2 (48 -> 96 px)
    ref = s["reference_boxes"][:m].numpy() / 2
    r = next(t for t in range(6) if np.allclose(np.sort(clip.boxes[t], 0), np.sort(ref, 0), atol=1e-4))
    target = s["search_boxes"][:m].numpy() * 48
    assert any(np.allclose(np.sort(clip.boxes[t], 0), np.sort(target, 0), atol=1e-4) for t in (r, r + 1))
    torch.testing.assert_close(s["proposals"], s["search_boxes"])  # sigma 0: the proposals are the boxes
    again = ds[3]
    assert all(torch.equal(again[k], s[k]) for k in ("reference", "reference_boxes", "proposals"))
    ds.set_epoch(1)
    noisy = MOTPairDataset([seq], 96, 8, 4, 1, 0.2, 0.1, seed=3)
    a, b = noisy[1], noisy[1]
    torch.testing.assert_close(a["proposals"], b["proposals"])
    v = a["valid"]
    iou = _xyxy_iou(a["proposals"][v].double().numpy(), a["search_boxes"][v].double().numpy())
    assert (iou >= 0.1 - 1e-6).all() and (iou < 0.999).any()


def test_the_mot_step_refines_proposals_and_learns_a_batch():
    r = load_recipe("utt_mot_synthetic", SMALL + ["data.mot.proposal_sigma=0"])
    torch.manual_seed(0)
    method = build_method(r)
    ds = build_dataset(r.data, "train", seed=0)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    outs = method.utt(batch["reference"], batch["reference_boxes"], batch["search"], batch["proposals"])
    assert len(outs) == 2 and outs[0].shape == batch["proposals"].shape  # L refinements, no proposal
    # the box heads start at zero: exact proposals come back unchanged, a zero loss
    out = method(batch)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-5) and out["mot_iou"].item() == pytest.approx(1.0)
    noisy = load_recipe("utt_mot_synthetic", SMALL + ["data.mot.proposal_sigma=0.2"])
    ds = build_dataset(noisy.data, "train", seed=0)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    opt = torch.optim.AdamW(method.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        out = method(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.8 * losses[0]
    assert set(out) == {"loss", "mot_giou_loss", "mot_l1_loss", "mot_iou", "mot_proposal_iou"}
    with pytest.raises(ConfigError, match="a MOT step needs method.iterations >= 1"):
        build_method(load_recipe("utt_mot_synthetic", SMALL + ["method.iterations=0"]))(batch)


class _Count(torch.utils.data.Dataset):
    def __init__(self, n, tag):
        self.n, self.tag = n, tag

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"i": i, "tag": self.tag}


def test_alternating_tasks_take_turns_batch_by_batch_each_in_its_own_order():
    ds = AlternatingTasks({"sot": _Count(6, "sot"), "mot": _Count(3, "mot")}, batch_size=2, seed=0)
    assert len(ds) == 2 * 3 * 2 and ds.steps() == 6
    batches = [[ds[i] for i in ds.order()[k * 2:(k + 1) * 2]] for k in range(ds.steps())]
    assert [{s["tag"] for s in b} for b in batches] == [{"sot"}, {"mot"}] * 3  # never mixed; even SOT
    assert [b[0]["task"] for b in batches] == [0, 1] * 3
    sot = [s["i"] for b in batches[0::2] for s in b]
    mot = [s["i"] for b in batches[1::2] for s in b]
    assert sorted(sot) == list(range(6))  # one pass over SOT's permutation
    assert sorted(mot[:3]) == [0, 1, 2] and mot[3:] == mot[:3]  # the shorter task wraps round its own
    ds.set_epoch(1)  # a new permutation per epoch, still one pass
    again = [ds[i]["i"] for k in range(0, ds.steps(), 2) for i in ds.order()[k * 2:(k + 1) * 2]]
    assert again != sot and sorted(again) == list(range(6))
    # two processes: the same task at the same step, different batches
    r0, r1 = ds.order(0, 2), ds.order(1, 2)
    for k in range(ds.steps(2)):
        a, b = [ds.locate(i) for i in r0[2 * k:2 * k + 2]], [ds.locate(i) for i in r1[2 * k:2 * k + 2]]
        assert {t for t, _ in a} == {t for t, _ in b} == {k % 2}
        assert a != b
    with pytest.raises(ConfigError, match="at least two datasets"):
        AlternatingTasks({"sot": _Count(2, "sot")}, 2)


def test_unified_training_resumes_exactly_mid_alternation(tmp_path):
    from test_engine import Crash

    from tubelet.engine import fit
    from tubelet.engine.datamodule import AlternatingSampler, TubeletDataModule

    args = SMALL + ["trainer.max_steps=4", "trainer.checkpoint_every_n_steps=3", "trainer.log_every_n_steps=1",
                    "trainer.accelerator=cpu", "trainer.keep_last_k=2", "optim.warmup_steps=1"]
    seen: dict[str, list] = {}

    def run(name, crash=None, resume=None):
        recipe = load_recipe("utt_unified_synthetic", args + [f"run_dir={tmp_path / name}"])
        torch.manual_seed(0)
        method = build_method(recipe)
        calls = seen.setdefault(name, [])
        forward = method.forward

        def spy(batch):
            calls.append(("mot" if "proposals" in batch else "sot", batch["index"].tolist()))
            return forward(batch)

        method.forward = spy
        if crash is None:
            fit(recipe, method=method, resume=resume)
        else:
            with pytest.raises(RuntimeError, match="simulated crash"):
                fit(recipe, method=method, callbacks=[Crash(crash)], resume=resume)
        return method

    full = run("full")
    assert [t for t, _ in seen["full"]] == ["sot", "mot", "sot", "mot"]
    run("cut", crash=3)
    resumed = run("cut", resume="auto")
    assert seen["cut"][3:] == seen["full"][3:]  # the resumed run continues with the MOT batch of step 3
    sa, sb = full.state_dict(), resumed.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    dm = TubeletDataModule(build_dataset(load_recipe("utt_unified_synthetic", SMALL).data, "train"), batch_size=2)
    assert isinstance(dm.train_dataloader().resumable_sampler, AlternatingSampler)
    with pytest.raises(ConfigError, match="a batch would mix tasks"):
        TubeletDataModule(dm.train_set, batch_size=3).train_dataloader()


def test_mot_pairs_from_a_mot_challenge_folder_equal_those_of_the_clip(tmp_path):
    from tubelet.config.schema import SyntheticConfig
    from tubelet.data.datasets.tracking import write_mot_sequence
    from tubelet.data.synthetic import SyntheticSource
    from tubelet.errors import DataError

    clip = SyntheticSource(SyntheticConfig(num_videos=2, frames=5, size=48, min_objects=2, max_objects=2)).clip(0)
    folder = write_mot_sequence(synthetic_mot_sequence(clip, "SYN"), tmp_path / "SYN")
    r = load_recipe("utt_mot_synthetic", SMALL + [f"data.train={tmp_path}"])
    ds = build_dataset(r.data, "train", seed=0)
    assert [q.name for q in ds.sequences] == ["SYN"] and ds.sequences[0].num_frames == 5
    mem = MOTPairDataset([synthetic_mot_sequence(clip, "SYN")], 64, 4, r.data.mot.max_objects, 1,
                         r.data.mot.proposal_sigma, r.data.mot.proposal_min_iou, 0, r.data.mean, r.data.std)
    a, b = ds[2], mem[2]
    for k in ("reference_boxes", "search_boxes", "proposals", "valid"):
        torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=0)  # boxes written with 3 decimals
    torch.testing.assert_close(a["search"], b["search"], atol=1e-5, rtol=0)  # PNG frames are lossless
    (folder / "gt" / "gt.txt").unlink()
    with pytest.raises(DataError, match="MOT training needs gt/gt.txt and the frames"):
        build_dataset(r.data, "train")
