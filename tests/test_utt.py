"""UTT's SOT model and the 2-D ResNet under it: the shapes and facts METHODS.md lists."""

from __future__ import annotations

import pytest
import torch

from tubelet.errors import CheckpointError
from tubelet.models import create_model
from tubelet.models.resnet2d import load_imagenet_state_dict
from tubelet.models.utt import corr_att, utt_box_loss


def _small(**kw):
    torch.manual_seed(0)
    return create_model("utt_r18", dim=64, heads=4, ffn_dim=128, **kw)


@pytest.mark.parametrize("name, params", [("resnet18_image", 11_689_512), ("resnet50_image", 25_557_032)])
def test_resnets_have_torchvisions_size_and_names(name, params):
    m = create_model(name)
    assert sum(p.numel() for p in m.parameters()) == params  # torchvision's resnet18 / resnet50
    keys = set(m.state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer4.1.bn2.num_batches_tracked", "fc.bias"} <= keys
    assert m.forward_features(torch.zeros(1, 3, 64, 64), 16).shape[-2:] == (4, 4)


def test_imagenet_state_dict_loads_and_a_wrong_one_is_named():
    a, b = create_model("resnet18_image"), create_model("resnet18_image")
    with torch.no_grad():
        a.conv1.weight.add_(1.0)
    load_imagenet_state_dict(b, {f"module.{k}": v for k, v in a.state_dict().items()})
    torch.testing.assert_close(b.conv1.weight, a.conv1.weight)
    no_fc = {k: v for k, v in a.state_dict().items() if not k.startswith("fc.")}
    load_imagenet_state_dict(b, no_fc, head=False)
    with pytest.raises(CheckpointError, match="r50.pth: not a ResNet of this depth: missing"):
        load_imagenet_state_dict(b, create_model("resnet50_image").state_dict(), "r50.pth")


def test_seven_sot_boxes_with_a_22x22_search_map_at_352():
    m = _small().eval()
    ref, search = torch.randn(2, 3, 352, 352), torch.randn(2, 3, 352, 352)
    assert m.features(search).shape[-2:] == (22, 22)
    with torch.no_grad():
        outs = m(ref, torch.tensor([[[100.0, 120, 180, 200]], [[10.0, 20, 60, 90]]]), search)
    assert len(outs) == 7 and all(o.shape == (2, 1, 4) for o in outs)
    p = outs[0]
    assert ((p >= 0) & (p <= 1)).all()  # soft-argmax corners lie in [0, 1]^2
    # zero-initialised deltas: an untrained refinement returns the proposal
    torch.testing.assert_close(outs[-1], p)


def test_n_targets_in_n_boxes_out_and_the_loss_trains_every_output():
    m = _small(iterations=2)
    ref, search = torch.randn(1, 3, 128, 128), torch.randn(1, 3, 128, 128)
    boxes = torch.tensor([[[10.0, 10, 50, 60], [60.0, 40, 100, 90], [20.0, 70, 40, 120]]])
    outs = m(ref, boxes, search)
    assert len(outs) == 3 and all(o.shape == (1, 3, 4) for o in outs)
    target = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.3, 0.8, 0.7], [0.2, 0.5, 0.3, 0.9]])[None]
    loss = utt_box_loss(outs, target)
    loss["loss"].backward()
    assert torch.isfinite(loss["loss"])
    for name in ("proposal_tower.4.weight", "refine.0.box_head.9.weight", "refine.1.box_head.9.weight",
                 "target_proj.0.weight", "backbone.conv1.weight", "backbone.layer3.0.bn2.weight"):
        assert dict(m.named_parameters())[name].grad.abs().sum() > 0, name
    # the loss of a perfect prediction is zero; the weights are 2 GIoU + 5 L1 per output
    zero = utt_box_loss([target, target], target)
    assert zero["loss"].item() == pytest.approx(0.0, abs=1e-6)
    off = target + torch.tensor([0.0, 0.0, 0.1, 0.0])
    one = utt_box_loss([off], target)
    assert one["loss"].item() == pytest.approx(2 * one["giou_loss"].item() + 5 * 0.1, rel=1e-5)


def test_corr_att_is_the_dot_product_broadcast_onto_the_map():
    f, s = torch.randn(3, 5), torch.randn(3, 5, 4, 6)
    out = corr_att(f, s)
    want = (f[:, :, None, None] * s).sum(1, keepdim=True) * s
    torch.testing.assert_close(out, want)
