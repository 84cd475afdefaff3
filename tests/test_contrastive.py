"""rho-SSL losses against explicit loops, momentum schedule, queue FIFO, Sinkhorn marginals, gradient
isolation of the target branch, rho clip spans, LARS, kNN and an end-to-end CLI round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tubelet.config.loader import from_dict
from tubelet.methods import build_method
from tubelet.methods.contrastive import (
    byol_loss,
    info_nce_global,
    info_nce_queue,
    momentum_at,
    sinkhorn,
    swav_loss,
)

torch.set_num_threads(1)


def _cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


# ------------------------------------------------------------------------------------------ losses
def test_info_nce_global_matches_loop():
    g = torch.Generator().manual_seed(0)
    V, B, d, t = 3, 4, 5, 0.1
    q, k = torch.randn(V, B, d, generator=g), torch.randn(V, B, d, generator=g)
    got = info_nce_global(q, k, t)
    total, n = 0.0, 0
    for i in range(V):
        for b in range(B):
            num, den = 0.0, 0.0
            for j in range(V):
                for c in range(B):
                    if c == b and j == i:
                        continue  # the query's own view
                    e = math.exp(_cos(q[i, b], k[j, c]) / t)
                    den += e
                    if c == b:
                        num += e
            total += -math.log(num / den)
            n += 1
    assert got.item() == pytest.approx(total / n, rel=1e-5)


def test_info_nce_analytic_value_and_permutation():
    # identical embeddings inside a video, orthogonal across videos: V-1 positives at e^{1/t}, the other
    # (B-1)*V keys at e^0.
    V, B, t = 3, 4, 0.5
    basis = torch.eye(8)[:B]
    q = basis.unsqueeze(0).expand(V, B, 8).clone()
    expected = -math.log((V - 1) * math.exp(1 / t) / ((V - 1) * math.exp(1 / t) + (B - 1) * V))
    assert info_nce_global(q, q, t).item() == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    q2, k2 = torch.randn(V, B, 8, generator=g), torch.randn(V, B, 8, generator=g)
    perm = torch.tensor([2, 0, 1])
    assert info_nce_global(q2[perm], k2[perm], t).item() == pytest.approx(info_nce_global(q2, k2, t).item(), rel=1e-6)
    # tends to 0 as the temperature falls when positives dominate
    assert info_nce_global(q, q, 0.01).item() < 1e-6


def test_info_nce_queue_matches_loop():
    g = torch.Generator().manual_seed(2)
    V, B, d, K, t = 2, 3, 4, 7, 0.2
    q, k = torch.randn(V, B, d, generator=g), torch.randn(V, B, d, generator=g)
    queue = F.normalize(torch.randn(K, d, generator=g), dim=1)
    got = info_nce_queue(q, k, queue, t)
    total = 0.0
    for i in range(V):
        for b in range(B):
            pos = [math.exp(_cos(q[i, b], k[j, b]) / t) for j in range(V) if j != i]
            neg = [math.exp(_cos(q[i, b], queue[n]) / t) for n in range(K)]
            total += -math.log(sum(pos) / (sum(pos) + sum(neg)))
    assert got.item() == pytest.approx(total / (V * B), rel=1e-5)


def test_byol_loss_matches_loop_and_mse_identity():
    g = torch.Generator().manual_seed(3)
    V, B, d = 3, 2, 6
    q, k = torch.randn(V, B, d, generator=g), torch.randn(V, B, d, generator=g)
    vals = [2 - 2 * _cos(q[i, b], k[j, b]) for i in range(V) for j in range(V) if j != i for b in range(B)]
    assert byol_loss(q, k).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    p, z = q[0, 0], k[1, 0]
    mse = float(((p / p.norm() - z / z.norm()) ** 2).sum())
    assert 2 - 2 * _cos(p, z) == pytest.approx(mse, rel=1e-5)


def test_swav_loss_matches_loop():
    g = torch.Generator().manual_seed(4)
    V, B, K, t = 2, 3, 5, 0.1
    scores = torch.randn(V, B, K, generator=g)
    codes = torch.softmax(torch.randn(V, B, K, generator=g), dim=-1)
    total, n = 0.0, 0
    for i in range(V):
        for j in range(V):
            if j == i:
                continue
            for b in range(B):
                logp = torch.log_softmax(scores[i, b] / t, dim=0)
                total += -float((codes[j, b] * logp).sum())
                n += 1
    assert swav_loss(scores, codes, t).item() == pytest.approx(total / n, rel=1e-5)


def test_sinkhorn_marginals():
    g = torch.Generator().manual_seed(5)
    N, K = 12, 4
    # cosine scores of a spread-out batch (prototype scores of similar magnitude, as early in training)
    scores = 0.1 * torch.randn(N, K, generator=g)
    codes = sinkhorn(scores, eps=0.05, iters=3)
    assert (codes >= 0).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(N))  # each sample's code sums to 1
    assert torch.allclose(codes.sum(0), torch.full((K,), N / K), rtol=0.15)  # about N/K per prototype
    exact = sinkhorn(scores, eps=0.05, iters=200)
    torch.testing.assert_close(exact.sum(0), torch.full((K,), N / K), rtol=1e-3, atol=1e-3)


def test_momentum_schedule_endpoints():
    for m0 in (0.994, 0.996):
        assert momentum_at(0, 100, m0) == pytest.approx(m0)
        assert momentum_at(50, 100, m0) == pytest.approx(1 - (1 - m0) / 2)
        assert momentum_at(100, 100, m0) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.994) == pytest.approx(0.997)
    assert momentum_at(50, 100, 0.996) == pytest.approx(0.998)


# ------------------------------------------------------------------------------------------ methods
def _recipe(fw: str, **method) -> object:
    return from_dict({
        "model": {"name": "slow_r50", "num_frames": 2, "img_size": 16,
                  "overrides": {"depths": [1, 1, 1, 1], "width": 4}},
        "data": {"rho": {"clips": 2}, "batch_size": 3},
        "method": {"name": "contrastive", "framework": fw, "proj_hidden": 16, "pred_hidden": 16, "queue_size": 10,
                   "num_prototypes": 6, "steps_per_epoch": 1, **method},
        "trainer": {"max_steps": 4},
    })


def _batch(B=3, V=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(B, V, 3, 2, 16, 16, generator=g)}


def test_queue_fifo_wraps():
    m = build_method(_recipe("moco", proj_dim=2))
    K = m.objective.queue.shape[0]  # 10 slots
    batches = []
    for i in range(3):  # 3 batches of 4 distinct keys: 12 writes wrap around once
        k = torch.stack([torch.ones(4), torch.arange(4.0) + 10 * i + 1], dim=1)
        batches.append(F.normalize(k, dim=1))
        m.objective.enqueue(k)
    assert int(m.objective.queue_ptr) == 12 % K
    torch.testing.assert_close(m.objective.queue[0:2], batches[2][2:4])  # the oldest slots were overwritten
    torch.testing.assert_close(m.objective.queue[2:4], batches[0][2:4])
    torch.testing.assert_close(m.objective.queue[4:8], batches[1])
    torch.testing.assert_close(m.objective.queue[8:10], batches[2][0:2])


def test_moco_step_does_not_use_own_keys():
    m = build_method(_recipe("moco"))
    before = m.objective.queue.clone()
    out = m(_batch())
    # the loss was computed with the queue as it was; the keys went in afterwards
    assert not torch.equal(before, m.objective.queue)
    assert int(m.objective.queue_ptr) == 6  # V*B = 6 keys enqueued
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("fw", ["moco", "byol"])
def test_target_branch_gets_no_gradients(fw):
    m = build_method(_recipe(fw))
    out = m(_batch())
    out["loss"].backward()
    assert all(p.grad is None for p in m.target_backbone.parameters())
    assert all(p.grad is None for p in m.target_projector.parameters())
    assert all(not p.requires_grad for p in m.target_backbone.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())


def test_momentum_update_moves_target_toward_source():
    m = build_method(_recipe("byol", momentum=0.5, momentum_schedule="constant"))
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    src = [p.clone() for p in m.backbone.parameters()]
    tgt = [p.clone() for p in m.target_backbone.parameters()]
    m.momentum_update()
    for s, t0, t1 in zip(src, tgt, m.target_backbone.parameters()):
        torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s)


def test_swav_prototypes_frozen_first_epoch():
    m = build_method(_recipe("swav", freeze_prototypes_steps=1))
    m(_batch())["loss"].backward()
    assert m.objective.prototypes.weight.grad is None  # step 1: frozen
    m.zero_grad()
    m(_batch(seed=1))["loss"].backward()
    assert m.objective.prototypes.weight.grad is not None and m.objective.prototypes.weight.grad.abs().sum() > 0


def test_simclr_gradients_reach_both_views():
    m = build_method(_recipe("simclr"))
    video = _batch()["video"].requires_grad_(True)
    m({"video": video})["loss"].backward()
    assert video.grad[:, 0].abs().sum() > 0 and video.grad[:, 1].abs().sum() > 0


@pytest.mark.parametrize("fw", ["simclr", "moco", "byol", "swav"])
@pytest.mark.parametrize("backbone", ["vit_tiny", "mvitv2_s"])
def test_transformer_backbones_work(backbone, fw):
    over = {"vit_tiny": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
            "mvitv2_s": {"depth": 2, "embed_dim": 8, "transitions": [1], "num_heads": 1}}[backbone]
    r = from_dict({
        "model": {"name": backbone, "num_frames": 4, "img_size": 32, "overrides": over},
        "data": {"rho": {"clips": 2}},
        "method": {"name": "contrastive", "framework": fw, "proj_hidden": 16, "pred_hidden": 16, "queue_size": 8,
                   "num_prototypes": 4, "steps_per_epoch": 1},
    })
    m = build_method(r)
    assert m.backbone.embed_dim == (32 if backbone == "vit_tiny" else 16)  # MViT: width doubles at the transition
    out = m({"video": torch.randn(2, 2, 3, 4, 32, 32)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


# ------------------------------------------------------------------------------------------ data
def test_synthetic_rho_dataset_views():
    from tubelet.data.builder import build_dataset

    r = from_dict({"data": {
        "num_frames": 4, "sampling_rate": 4, "target_fps": 32.0, "crop_size": 16, "clip_max_span": 1.5,
        "augment": {"hflip": 0.0, "color_jitter": 0.5},
        "rho": {"clips": 3, "small_crops": 2, "small_size": 8, "mix_views": True,
                "target_augment": {"hflip": 0.0, "rrc_scale": [0.5, 1.0]}},
        "synthetic": {"num_videos": 16, "frames": 16, "size": 24, "fps": 8}}})
    ds = build_dataset(r.data, "train")
    s = ds[0]
    assert s["video"].shape == (3, 3, 4, 16, 16) and s["target"].shape == (3, 3, 4, 16, 16)
    assert s["small"].shape == (3, 2, 3, 4, 8, 8) and s["mix"].shape == (3, 3, 4, 16, 16)
    assert s["label"].shape == (3,)
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["video"], s["video"])
    # rho = 1: two views of one clip
    r1 = from_dict({"data": {"num_frames": 4, "sampling_rate": 4, "target_fps": 32.0, "crop_size": 16,
                             "rho": {"clips": 1}, "synthetic": {"num_videos": 16, "frames": 16, "size": 24}}})
    ds1 = build_dataset(r1.data, "train")
    assert ds1[0]["video"].shape[0] == 2 and ds1.base.repeats == 1  # one window, viewed twice


# ------------------------------------------------------------------------------------------ optimiser
def test_lars_step_matches_formula():
    from tubelet.engine.lars import LARS

    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # a 2-D weight gets the trust ratio
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
    w.grad = torch.tensor([[0.6, 0.8]])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.6, 0.8]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    ratio = 0.01 * 5.0 / float(g.norm())
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * ratio * g)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0]) - 0.5 * (2.0 + 0.1 * 1.0))  # 1-D: no trust ratio
    b.grad = None
    # second step: momentum buffer v = 0.9 v + local_lr * g
    w.grad = torch.tensor([[0.6, 0.8]])
    w0 = w.detach().clone()
    g2 = torch.tensor([[0.6, 0.8]]) + 0.1 * w0
    v = 0.9 * ratio * g + 0.01 * float(w0.norm()) / float(g2.norm()) * g2
    opt.step()
    torch.testing.assert_close(w.detach(), w0 - 0.5 * v)


# ------------------------------------------------------------------------------------------ knn
def test_knn_matches_loop():
    from tubelet.eval.knn import knn_predict

    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(20, 4, generator=g), dim=1)
    labels = torch.randint(0, 3, (20,), generator=g)
    test = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    got = knn_predict(test, train, labels, num_classes=3, k=4, temperature=0.1)
    for n in range(5):
        sims = [(float(test[n] @ train[m]), int(labels[m])) for m in range(20)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * 3
        for s, c in sims[:4]:
            votes[c] += math.exp(s / 0.1)
        assert int(got[n].argmax()) == int(np.argmax(votes))


def test_rho_views_on_real_videos(tmp_path, videos_dir):
    from tubelet.config.schema import AugmentConfig, DataConfig, RhoConfig
    from tubelet.data.builder import build_dataset

    m = tmp_path / "train.csv"
    m.write_text("path,label\nv_SoccerJuggling_g23_c01.avi,0\nWUzgd7C1pWA.mp4,1\n")
    cfg = DataConfig(kind="manifest", train=str(m), root=str(videos_dir), num_frames=4, sampling_rate=2, crop_size=32,
                     clip_max_span=1.0, augment=AugmentConfig(short_side=[36, 44], color_jitter=0.5),
                     rho=RhoConfig(clips=3, target_augment=AugmentConfig(short_side=[36, 44]), small_crops=1,
                                   small_size=16))
    ds = build_dataset(cfg, "train")
    s = ds[1]
    assert s["video"].shape == (3, 3, 4, 32, 32) and s["video"].dtype == torch.float32
    assert s["target"].shape == (3, 3, 4, 32, 32) and s["small"].shape == (3, 1, 3, 4, 16, 16)
    assert s["label"].tolist() == [1, 1, 1]
    # the windows ClipDataset draws for rho clips stay inside clip_max_span
    from fractions import Fraction

    from tubelet.data.sampling import rho_clips

    for seed in range(20):
        w = rho_clips(Fraction(10), Fraction(4, 15), 3, np.random.default_rng(seed), max_span=Fraction(1))
        assert max(e for _, e in w) - min(s for s, _ in w) <= 1


def test_cli_pretrain_with_knn_then_probe(tmp_path):
    """tubelet fit on the shipped synthetic rho-BYOL recipe (shrunk), kNN monitor at the end, then the
    linear probe recipe from its backbone.safetensors."""
    import json

    from tubelet.cli.main import main

    small = ["data.synthetic.num_videos=48", "data.synthetic.frames=12", "data.synthetic.size=20", "data.crop_size=16",
             "data.num_frames=4", "model.num_frames=4", "model.img_size=16", "data.batch_size=4",
             "model.overrides.width=4", "trainer.max_steps=3", "trainer.checkpoint_every_n_steps=3"]
    pre = tmp_path / "pre"
    args = ["fit", "rho_synthetic_byol", *small, "method.proj_hidden=32", "method.pred_hidden=32",
            "method.knn_max_train=16", f"run_dir={pre}"]
    assert main(args) == 0
    metrics = json.loads((pre / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and 0.0 <= metrics["val/knn_top1"] <= 1.0
    assert "train/pos_cos" in metrics and "train/momentum" in metrics
    probe = tmp_path / "probe"
    assert main(["fit", "rho_synthetic_probe", *small, f"model.checkpoint={pre / 'backbone.safetensors'}",
                 "trainer.val_check_interval=3", f"run_dir={probe}"]) == 0
    assert "val/top1" in json.loads((probe / "metrics.json").read_text())
