"""MeMViT: memory attention, compression, gapN selection, per-video masking, stop-gradient (METHODS.md 7)."""

from __future__ import annotations

import pytest
import torch

from tubelet.errors import ConfigError
from tubelet.models import create_model, get_model_config
from tubelet.models.memvit import MemoryPoolingAttention, memory_offsets

TINY = dict(num_classes=5, depth=4, transitions=(1, 3), num_frames=16, img_size=64, kv_stride=(1, 4, 4),
            drop_path_rate=0.0, head_dropout=0.0)


def tiny(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("memvit_16", **{**TINY, **kw})


def memory_free_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same network without memory, loaded with the memory model's weights (all but memory's own)."""
    free = create_model("memvit_16", **{**TINY, "memory": False})
    res = free.load_state_dict(model.state_dict(), strict=False)
    assert res.missing_keys == []
    assert res.unexpected_keys and all("compress_" in k or "rel_pos_mem_" in k for k in res.unexpected_keys)
    return free.eval()


def clips(n: int, b: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 16, 64, 64, generator=g) for _ in range(n)]


def test_compression_8x7x7_becomes_2x4x4():
    layer = MemoryPoolingAttention(96, 96, 1, input_grid=(8, 56, 56), kv_stride=(1, 8, 8), memory=True)
    k = torch.randn(2, 1 + 8 * 7 * 7, 96)
    ck, cv, grid = layer.compress(k, k.clone(), (8, 7, 7))
    assert grid == (2, 4, 4)
    assert ck.shape == cv.shape == (2, 1 + 2 * 4 * 4, 96)  # the CLS token stays, uncompressed
    # CLS skips the conv: its compressed key is LN(CLS) exactly
    torch.testing.assert_close(ck[:, 0], layer.norm_compress_k(k[:, 0]))
    assert tuple(layer.compress_k.kernel_size) == (7, 3, 3) and layer.compress_k.groups == 96
    assert layer.compress_k.bias is None


def test_cache_length_and_gap_selection():
    assert get_model_config("memvit_16").cache_length == 5
    assert get_model_config("memvit_24").cache_length == 7
    assert memory_offsets(4, 2, 2) == [4, 2]  # gap2, full cache: t-4 and t-2
    assert memory_offsets(6, 3, 2) == [6, 3]  # gap3: t-6 and t-3
    assert memory_offsets(1, 2, 2) == [] and memory_offsets(3, 2, 2) == [2]
    model = tiny().eval()
    seen = []
    with torch.no_grad():
        for x in clips(7):
            model(x)
            layer = model.memory_layers()[0]
            seen.append(layer.last_memory.steps)
            assert len(layer.cached_entries) <= 4  # t-4 ... t-1 kept, plus the current clip = 5
    assert seen == [[], [], [0], [1], [0, 2], [1, 3], [2, 4]]
    assert [e.step for e in model.memory_layers()[0].cached_entries] == [3, 4, 5, 6]
    assert len(model.memory_layers()) == 2  # blocks 0 and 2 of 4


def test_memory_changes_the_output():
    model = tiny().eval()
    free = memory_free_twin(model)
    xs = clips(3)
    with torch.no_grad():
        outs = [model(x) for x in xs]
        ref = [free(x) for x in xs]
    torch.testing.assert_close(outs[0], ref[0])  # nothing cached yet
    assert (outs[2] - ref[2]).abs().max() > 1e-4  # clip 2 attends to clip 0


def test_after_a_clear_equals_memory_free_mvit():
    model = tiny().eval()
    free = memory_free_twin(model)
    xs = clips(6)
    with torch.no_grad():
        for x in xs[:5]:
            model(x)
        model.clear_memory()
        torch.testing.assert_close(model(xs[5]), free(xs[5]), rtol=0, atol=1e-6)
        # a new video id in every slot: memory is masked per sample instead of cleared, same output
        for x in xs[:5]:
            model(x, video_ids=torch.tensor([0, 1]))
        torch.testing.assert_close(model(xs[5], video_ids=torch.tensor([2, 3])), free(xs[5]), rtol=0, atol=1e-5)


def test_memory_of_video_a_never_reaches_video_b():
    model = tiny().eval()
    free = memory_free_twin(model)
    xs, other = clips(6, seed=1), clips(6, seed=2)
    ids = torch.tensor([0, 1])
    with torch.no_grad():
        # two streams side by side: changing B's frames (slot 1) leaves A's outputs (slot 0) unchanged
        run1 = [model(x, video_ids=ids) for x in xs]
        model.clear_memory()
        run2 = [model(torch.stack((x[0], o[1])), video_ids=ids) for x, o in zip(xs, other)]
        for a, b in zip(run1, run2):
            torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
        assert (run1[-1][1] - run2[-1][1]).abs().max() > 1e-3
        # slot 0 moves from A to B: B's first clip sees none of A's memory, whatever A's frames were
        outs = []
        for a_clips in (xs, other):
            model.clear_memory()
            for x in a_clips[:5]:
                model(x, video_ids=torch.tensor([0, 1]))
            outs.append(model(xs[5], video_ids=torch.tensor([7, 1]))[0])
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(outs[0], free(xs[5])[0], rtol=0, atol=1e-5)


def test_stop_gradient_and_gradients_reach_both_compressors():
    model = tiny().train()
    layers = model.memory_layers()
    for step, x in enumerate(clips(6)):
        model.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        # a graph reaching into an earlier iteration would fail here: its buffers were freed by that backward
        loss.backward()
        for layer in layers:
            for entry in layer.cached_entries:
                assert not entry.k.requires_grad and not entry.v.requires_grad
                assert entry.k.grad_fn is None and entry.v.grad_fn is None
            if layer.last_memory.steps:  # an entry was attended (and, the first time, compressed) in this graph
                for conv in (layer.compress_k, layer.compress_v):
                    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0, (step, conv)
                for name in ("rel_pos_mem_h", "rel_pos_mem_w", "rel_pos_mem_t"):
                    assert getattr(layer, name).grad.abs().sum() > 0
            else:
                assert layer.compress_k.weight.grad is None


def test_projected_cache_flag():
    model = tiny(memory_cache="projected").eval()
    layer = model.memory_layers()[0]
    assert layer.compress_k.in_channels == layer.dim_out
    with torch.no_grad():
        for x in clips(3):
            model(x)
    assert layer.last_memory.steps == [0]
    with pytest.raises(ConfigError, match="memory_cache"):
        tiny(memory_cache="keys")


def test_refusals():
    with pytest.raises(ConfigError, match="grad_checkpointing"):
        tiny(grad_checkpointing=True)
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        tiny().set_grad_checkpointing(True)
    with pytest.raises(ConfigError, match="softmax"):
        tiny(attention="castling")
    with pytest.raises(ConfigError, match="attn_impl='concat' is not supported"):
        tiny(attn_impl="concat")
    model = tiny().eval()
    with torch.no_grad():
        model(clips(1, b=2)[0])
        with pytest.raises(ValueError, match="batch size constant"):
            model(clips(1, b=3)[0])


def test_registered_variants_build_on_meta():
    with torch.device("meta"):
        m16 = create_model("memvit_16")
        m24 = create_model("memvit_24")
    assert [i for i, b in enumerate(m16.blocks) if b.attn.memory] == list(range(0, 16, 2))
    assert len(m24.memory_layers()) == 12
    # pool-first: K/V pooling convs see the block input's per-head width (transition: 96 wide, 2 heads)
    assert m16.blocks[1].attn.pool_k.in_channels == 48 and m16.blocks[1].attn.k.out_features == 192
    assert m16.blocks[0].attn.rel_pos_mem_t.shape[0] == 23  # attn_max_len * T - 1 = 3 * 8 - 1


@pytest.mark.parametrize("kind", ["supervised", "linear_probe"])
def test_classify_without_video_ids_starts_from_empty_memory(kind):
    # validation_step and `tubelet test` call method.classify on batches of unrelated videos, without ids:
    # each batch is classified from an empty memory (else the clips of two batches back were attended,
    # unmasked), and a last batch of another size is not refused
    from tubelet.methods.linear_probe import LinearProbe
    from tubelet.methods.supervised import Supervised

    backbone = tiny().eval()
    method = (Supervised(backbone) if kind == "supervised" else LinearProbe(backbone, 5)).eval()
    xs = clips(4)
    with torch.no_grad():
        run = [method.classify(x) for x in xs]
        last = method.classify(xs[3][:1])
        ref = []
        for x in xs:
            backbone.clear_memory()
            ref.append(method.classify(x))
    for r, f in zip(run, ref):
        torch.testing.assert_close(r, f, rtol=0, atol=1e-6)
    torch.testing.assert_close(last, ref[3][:1], rtol=0, atol=1e-5)
