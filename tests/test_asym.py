"""Asymmetric Siamese designs (arXiv 2204.00613): each option changes only its own side."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tubelet.config.loader import from_dict
from tubelet.data import transforms as T
from tubelet.methods import build_method
from tubelet.methods.asym import mean_of_others, project_views, scalemix, scalemix_boxes

torch.set_num_threads(1)


def _method(fw: str = "byol", **method):
    torch.manual_seed(0)
    r = from_dict({
        "model": {"name": "slow_r50", "num_frames": 2, "img_size": 16,
                  "overrides": {"depths": [1, 1, 1, 1], "width": 4}},
        "data": {"rho": {"clips": 3}},
        "method": {"name": "contrastive", "framework": fw, "proj_hidden": 16, "pred_hidden": 16, "queue_size": 12,
                   "num_prototypes": 6, "steps_per_epoch": 1, **method},
    })
    return build_method(r)


def _record(m):
    """Wrap source/target embedding to record their inputs and outputs."""
    seen: dict[str, list] = {"source_in": [], "target_in": [], "source_out": [], "target_out": []}
    src, tgt = m.source_embed, m.target_embed

    def s(x, v):
        out = src(x, v)
        seen["source_in"].append(x.detach().clone())
        seen["source_out"].append(out[1].detach().clone())
        return out

    def t(x, v, pooled_source=None):
        out = tgt(x, v, pooled_source)
        seen["target_in"].append(x.detach().clone())
        seen["target_out"].append(out.detach().clone())
        return out

    m.source_embed, m.target_embed = s, t
    return seen


def _batch(seed=0, B=4, V=3):
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(B, V, 3, 2, 16, 16, generator=g)}


def test_multicrop_adds_source_queries_only():
    m = _method()
    seen = _record(m)
    batch = _batch()
    m.eval()  # same BN behaviour in both calls, no momentum step
    base = m(batch)
    small = torch.randn(4, 3, 2, 3, 2, 8, 8)
    out = m({**batch, "small": small})
    assert len(seen["target_in"]) == 2 and torch.equal(seen["target_in"][0], seen["target_in"][1])
    assert len(seen["source_in"]) == 3  # main views twice, then the 2 x 3 x 4 small crops
    assert seen["source_in"][2].shape == (2 * 3 * 4, 3, 2, 8, 8)
    assert out["loss"].item() != pytest.approx(base["loss"].item())


def test_multicrop_loss_weights():
    m = _method()
    m.eval()
    batch = _batch()
    small = torch.randn(4, 3, 2, 3, 2, 8, 8)
    total = m({**batch, "small": small})["loss"]
    main = m(batch)["loss"]
    # L = L(main) + mean over the 2 small crops of L(small crop s)
    parts = []
    for s in range(2):
        one = m({**batch, "small": small[:, :, s : s + 1]})["loss"]
        parts.append(one - main)  # with one crop: L(main) + L(small s)
    torch.testing.assert_close(total, main + (parts[0] + parts[1]) / 2, rtol=1e-5, atol=1e-5)


def test_scalemix_alters_only_source_views():
    m = _method()
    seen = _record(m)
    m.eval()
    batch = _batch()
    mix = torch.randn_like(batch["video"])
    m({**batch, "mix": mix})
    x = batch["video"].transpose(0, 1).flatten(0, 1)
    y = mix.transpose(0, 1).flatten(0, 1)
    torch.testing.assert_close(seen["target_in"][0], x)  # targets see the unmixed views
    src = seen["source_in"][0]
    assert not torch.equal(src, x)
    from_x, from_y = src == x, src == y
    assert bool((from_x | from_y).all())  # every pixel comes from one of the two views
    # one box per clip, the same in every frame and channel
    assert torch.equal(from_y[:, :1, :1].expand_as(from_y), from_y)


def test_scalemix_box_fraction():
    mask, lam = scalemix_boxes(4000, 64, 64, torch.Generator().manual_seed(0))
    frac = mask.float().mean(dim=(1, 2, 3, 4))
    assert mask.shape == (4000, 1, 1, 64, 64)
    assert bool((frac <= 1 - lam + 0.04).all())  # never more than 1 - lambda (clipping only removes area)
    # boxes whose centre is far enough from the border are not clipped: fraction about 1 - lambda
    small = lam > 0.8  # side <= 0.45 * 64
    assert torch.allclose(frac[small].mean(), (1 - lam[small]).mean(), rtol=0.35)
    a, b = torch.zeros(3, 3, 2, 8, 8), torch.ones(3, 3, 2, 8, 8)
    assert scalemix(a, b).shape == a.shape


def test_asym_aug_target_pipeline_has_no_colour():
    from tubelet.data.rho import RhoViews

    r = from_dict({"data": {
        "crop_size": 16,
        "augment": {"color_jitter": 0.5, "grayscale": 0.2, "blur": 0.5, "randaugment": "rand-m10-n2-mstd0.5"},
        "rho": {"clips": 2, "target_augment": {"hflip": 0.5, "rrc_scale": [0.08, 1.0]}}}})
    views = RhoViews(r.data)
    colour = (T.ColorJitter, T.RandomGrayscale, T.GaussianBlur, T.RandAugment)
    assert any(isinstance(t, colour) for t in views.source.transforms)
    assert not any(isinstance(t, colour) for t in views.target.transforms)


def test_asym_aug_feeds_target_views_to_target_only():
    m = _method()
    seen = _record(m)
    m.eval()
    batch = _batch()
    target = torch.randn_like(batch["video"])
    m({**batch, "target": target})
    torch.testing.assert_close(seen["source_in"][0], batch["video"].transpose(0, 1).flatten(0, 1))
    torch.testing.assert_close(seen["target_in"][0], target.transpose(0, 1).flatten(0, 1))


def test_asym_bn_changes_only_the_target():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    z = torch.randn(12, 4)
    torch.testing.assert_close(project_views(head, z, 3, joint=True), head(z))
    torch.testing.assert_close(project_views(head, z, 3, joint=False), torch.cat([head(c) for c in z.chunk(3)]))

    base, asym = _method(), _method(asym_bn=True)
    assert isinstance(asym.target_projector.net[1], nn.SyncBatchNorm)
    assert type(asym.projector.net[1]) is nn.BatchNorm1d  # the source keeps plain per-view BN
    sb, sa = _record(base), _record(asym)
    batch = _batch()
    base(batch)
    asym(batch)
    torch.testing.assert_close(sb["source_out"][0], sa["source_out"][0])
    assert not torch.allclose(sb["target_out"][0], sa["target_out"][0])
    # the target projector's BN saw all 3 views at once: its running mean moved by the mean over 12 rows
    bn = asym.target_projector.net[1]
    tb = asym.target_backbone
    x = batch["video"].transpose(0, 1).flatten(0, 1)
    h = asym.target_projector.net[0](tb.forward_head(tb.forward_features(x), pre_logits=True))
    torch.testing.assert_close(bn.running_mean, 0.1 * h.detach().mean(0), rtol=1e-4, atol=1e-5)


def test_mean_enc_averages_before_normalising():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(3, 2, 4, generator=g)
    got = mean_of_others(k)
    for i in range(3):
        torch.testing.assert_close(got[i], sum(k[j] for j in range(3) if j != i) / 2)
    m = _method(mean_enc=True)
    seen = _record(m)
    m.eval()
    out = m(_batch())
    assert torch.isfinite(out["loss"])
    # the loss equals BYOL against normalised averaged keys
    from tubelet.methods.contrastive import byol_loss

    q = seen["source_out"][0].view(3, 4, -1)
    kt = mean_of_others(seen["target_out"][0].view(3, 4, -1))
    torch.testing.assert_close(out["loss"], byol_loss(q, kt, positives="same"))


@pytest.mark.parametrize("fw", ["simclr", "moco", "swav"])
def test_options_compose_with_every_framework(fw):
    m = _method(fw, asym_bn=True, mean_enc=True)
    b = _batch()
    out = m({**b, "target": torch.randn_like(b["video"]), "mix": torch.randn_like(b["video"]),
             "small": torch.randn(4, 3, 2, 3, 2, 8, 8)})
    out["loss"].backward()
    assert torch.isfinite(out["loss"])


def test_images_as_single_frame_clips():
    m = _method("moco")
    out = m({"video": torch.randn(4, 2, 3, 1, 16, 16), "small": torch.randn(4, 2, 2, 3, 1, 8, 8)})
    assert torch.isfinite(out["loss"])


def test_asym_bn_moco_gets_asym_siam_projector():
    # rho-MoCo's projector has no BN; AsymBN gives it asym-siam's MoCo v2 one: Linear, BN, ReLU, Linear,
    # ReLU, Linear, with the target's BN synchronised and the source's plain
    base = _method("moco")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in base.projector.modules())
    m = _method("moco", asym_bn=True)
    kinds = [type(x) for x in m.projector.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [type(x) for x in m.target_projector.net][1] is nn.SyncBatchNorm
    assert type(m.projector.net[1]) is nn.BatchNorm1d
    m(_batch())
    # the target BN saw all 3 views of the step at once
    tb = m.target_backbone
    x = _batch()["video"].transpose(0, 1).flatten(0, 1)
    with torch.no_grad():
        h = m.target_projector.net[0](tb.forward_head(tb.forward_features(x), pre_logits=True))
    torch.testing.assert_close(m.target_projector.net[1].running_mean, 0.1 * h.mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fw", ["moco", "simclr"])
def test_asym_bn_refuses_a_projector_without_bn(fw):
    from tubelet.errors import ConfigError

    with pytest.raises(ConfigError, match=f"asym_bn.*'{fw}'.*no BatchNorm"):
        _method(fw, asym_bn=True, proj_bn=False)


@pytest.mark.parametrize("fw", ["simclr", "swav"])
def test_asym_bn_shared_encoder_syncs_the_target_only(fw):
    base, asym = _method(fw), _method(fw, asym_bn=True)
    # the source projector stays plain BN; the target branch's BN is synchronised but shares its weights
    assert type(asym.projector.net[1]) is nn.BatchNorm1d
    assert isinstance(asym.target_projector.net[1], nn.SyncBatchNorm)
    assert asym.target_projector.net[1].weight is asym.projector.net[1].weight
    assert asym.target_projector.net[0].weight is asym.projector.net[0].weight
    assert len(list(asym.parameters())) == len(list(base.parameters()))  # one projector to train
    sb, sa = _record(base), _record(asym)
    batch = _batch()
    base(batch)
    out = asym(batch)
    # source branch: output and running statistics of per-view, per-device BN, as without AsymBN
    torch.testing.assert_close(sa["source_out"][0], sb["source_out"][0])
    torch.testing.assert_close(asym.projector.net[1].running_mean, base.projector.net[1].running_mean)
    torch.testing.assert_close(asym.projector.net[1].running_var, base.projector.net[1].running_var)
    # target branch: statistics over all 12 rows at once, in its own buffers
    x = batch["video"].transpose(0, 1).flatten(0, 1)
    with torch.no_grad():
        h = asym.projector.net[0](asym.backbone.forward_head(asym.backbone.forward_features(x), pre_logits=True))
    torch.testing.assert_close(asym.target_projector.net[1].running_mean, 0.1 * h.mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(sa["target_out"][0], sb["source_out"][0])  # base keys = per-view source
    out["loss"].backward()
    assert asym.projector.net[1].weight.grad is not None
