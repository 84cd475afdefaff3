"""``DepthwiseConv3d``: a depthwise Conv3d that keeps fp32 under CPU autocast (oneDNN's bf16 depthwise Conv3d
on the channels-last token layout is several times slower than fp32), and the pooling layers use it."""

import torch
from torch import nn

from tubelet.models import create_model
from tubelet.models.layers.depthwise import DepthwiseConv3d


def _pair():
    torch.manual_seed(0)
    conv = DepthwiseConv3d(8, (3, 3, 3), stride=(1, 2, 2), padding=1)
    ref = nn.Conv3d(8, 8, 3, stride=(1, 2, 2), padding=1, groups=8, bias=False)
    ref.load_state_dict(conv.state_dict())  # same keys and shapes as nn.Conv3d
    return conv, ref


def test_under_cpu_autocast_it_computes_in_fp32_with_gradients():
    conv, ref = _pair()
    x = torch.randn(2, 4, 6, 6, 8).permute(0, 4, 1, 2, 3).to(torch.bfloat16)  # channels-last, as pool_tokens
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        autocast_ref = ref(x)
    assert y.dtype == torch.float32 and autocast_ref.dtype == torch.bfloat16
    expect = ref(x.detach().float())
    torch.testing.assert_close(y, expect, rtol=0, atol=0)
    y.square().sum().backward()
    assert x.grad is not None and conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32


def test_without_autocast_it_is_the_plain_convolution():
    conv, ref = _pair()
    x = torch.randn(2, 8, 4, 6, 6)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
    conv, ref = conv.to(torch.bfloat16), ref.to(torch.bfloat16)  # bf16-true: the caller's dtype, no cast
    torch.testing.assert_close(conv(x.to(torch.bfloat16)), ref(x.to(torch.bfloat16)), rtol=0, atol=0)


def test_every_depthwise_conv3d_of_mvitv2_and_memvit_keeps_fp32():
    for name, kw in (("mvitv2_s", {}), ("memvit_16", {})):
        with torch.device("meta"):
            model = create_model(name, num_frames=16, img_size=224, **kw)
        depthwise = [n for n, m in model.named_modules()
                     if isinstance(m, nn.Conv3d) and m.groups == m.in_channels == m.out_channels > 1]
        assert depthwise, name
        assert all(isinstance(model.get_submodule(n), DepthwiseConv3d) for n in depthwise), name
