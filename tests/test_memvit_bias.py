"""MeMViT's attention bias: the in-place form (one buffer, mask only when needed) equals the concatenated one."""

from __future__ import annotations

import copy

import pytest
import torch

from tubelet.models import create_model

TINY = dict(num_classes=5, depth=4, transitions=(1, 3), num_frames=16, img_size=64, kv_stride=(1, 4, 4),
            drop_path_rate=0.0, head_dropout=0.0)


def filled(**kw) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny MeMViT whose cache is full (every memory block attends two entries) and the next clip."""
    torch.manual_seed(0)
    model = create_model("memvit_16", **{**TINY, **kw}).eval()
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 3, 16, 64, 64, generator=g) for _ in range(model.cfg.cache_length)]
    with torch.no_grad():
        for x in xs[:-1]:
            model(x, video_ids=torch.tensor([0, 1]))
    return model, xs[-1]


def recorded_bias_calls(model: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor | None) -> list[tuple]:
    """The arguments of every memory block's bias call in one forward."""
    calls = []
    for layer in model.memory_layers():
        def record(*args, _layer=layer, **kw):
            calls.append((_layer, args))
            return type(_layer).attention_bias(_layer, *args, **kw)
        layer.attention_bias = record
    with torch.no_grad():
        model(x, video_ids=ids)
    for layer in model.memory_layers():
        del layer.attention_bias
    return calls


@pytest.mark.parametrize("spatial,temporal", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("ids", [None, (0, 1), (0, 5)], ids=["no-ids", "same-videos", "slot1-new-video"])
def test_inplace_bias_equals_the_concatenated_bias(spatial, temporal, ids):
    model, x = filled(rel_pos_spatial=spatial, rel_pos_temporal=temporal)
    calls = recorded_bias_calls(model, x, None if ids is None else torch.tensor(ids))
    assert len(calls) == 2 and all(len(args[3]) == 2 for _, args in calls)  # both memory blocks read 2 entries
    for layer, (q, q_grid, k_grid, used) in calls:
        with torch.no_grad():
            fast = layer.attention_bias(q, q_grid, k_grid, used, inplace=True)
            general = layer.attention_bias(q, q_grid, k_grid, used, inplace=False)
        assert fast.shape == general.shape == (2, layer.num_heads, q.shape[2], sum(u[0].shape[1] for u in used)
                                                 + k_grid[0] * k_grid[1] * k_grid[2] + 1)
        torch.testing.assert_close(fast, general, rtol=0, atol=1e-6)  # CPU: code-matrix product, sum order differs
        mem_cols = sum(u[0].shape[1] for u in used)
        masked = torch.isinf(fast)
        if ids == (0, 5):  # slot 1's memory is of video 1: all its memory columns, and nothing else, masked
            assert masked[1, :, :, :mem_cols].all() and not masked[1, :, :, mem_cols:].any() and not masked[0].any()
        else:
            assert not masked.any()
        if not (spatial or temporal):  # memory of the same video adds nothing to the logits
            assert not fast[~masked].any()


def test_same_video_skips_the_mask_and_equals_no_ids():
    model, x = filled()
    with_ids = recorded_bias_calls(copy.deepcopy(model), x, torch.tensor([0, 1]))
    without = recorded_bias_calls(copy.deepcopy(model), x, None)
    for (layer, a), (_, b) in zip(with_ids, without):
        assert a[3][0][3] is not None and b[3][0][3] is None  # the first carries per-sample "same video"
        with torch.no_grad():
            assert torch.equal(layer.attention_bias(*a, inplace=True), layer.attention_bias(*b, inplace=True))
            layer._code_devices = ()  # the broadcast-add form (other devices): the same values
            torch.testing.assert_close(layer.attention_bias(*a, inplace=True), layer.attention_bias(*b, inplace=False),
                                       rtol=0, atol=0)
            del layer._code_devices
        with pytest.raises(ValueError, match="not differentiable"):
            layer.attention_bias(*a, inplace=True)


@pytest.mark.parametrize("ids", [(0, 1), (0, 5)])
def test_model_output_same_with_and_without_autograd(ids):
    # without autograd the bias is written in place; with it, concatenated: one network, one output
    model, x = filled()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        fast = model(x, video_ids=torch.tensor(ids))
    general = twin(x, video_ids=torch.tensor(ids))
    assert general.requires_grad
    torch.testing.assert_close(fast, general.detach(), rtol=0, atol=1e-5)
