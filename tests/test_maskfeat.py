"""MaskFeat (methods/maskfeat.py): masks, targets, loss and the backbone hook, against explicit computations."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from tubelet.config.loader import from_dict, load_recipe
from tubelet.data.masking import (
    beit_block_mask,
    maskfeat_cube_mask,
    maskfeat_masks,
    upsample_unit_mask,
)
from tubelet.methods import build_method
from tubelet.methods.hog import HOGLayer
from tubelet.methods.maskfeat import MaskFeat, masked_mse, pixel_targets

torch.set_num_threads(1)
RECIPES = Path(__file__).resolve().parents[1] / "src" / "tubelet" / "recipes"


def tiny_vit_recipe(**method) -> object:
    """ViT on 4x16x16 clips: 2x8x8 tubelets -> 2x2x2 tokens, 4x4 HOG cells -> 2x2 cells per token."""
    return from_dict({
        "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 16,
                  "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "method": {"name": "maskfeat", "mask_unit": [1, 1, 1], "hog_cell": 4, **method},
    })


# ------------------------------------------------------------------------------------------ masks


def test_cube_masks_meet_the_budget_and_are_reproducible():
    counts = []
    for seed in range(60):
        m = maskfeat_cube_mask((8, 7, 7), 0.4, generator=torch.Generator().manual_seed(seed))
        assert m.shape == (8, 7, 7) and m.dtype == torch.bool
        counts.append(int(m.sum()))
    assert max(counts) <= 157  # round(0.4 * 392): never over budget
    # Greedy blocks stop when no block fits what is left; measured: most masks reach 155-157.
    assert min(counts) >= 140 and sum(counts) / len(counts) >= 150
    a = maskfeat_cube_mask(generator=torch.Generator().manual_seed(7))
    b = maskfeat_cube_mask(generator=torch.Generator().manual_seed(7))
    c = maskfeat_cube_mask(generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cube_masks_are_blocks_spanning_time():
    m = maskfeat_cube_mask(generator=torch.Generator().manual_seed(3))
    # Blocks have temporal extent 1..8: some masked unit is masked in its neighbouring time step too.
    assert (m[1:] & m[:-1]).any()
    # And no block is the whole grid: every time step keeps something visible.
    assert (~m).flatten(1).any(dim=1).all()


def test_upsampled_masks_are_constant_within_units():
    units = maskfeat_masks(3, (8, 7, 7), 0.4, "cube", generator=torch.Generator().manual_seed(0))
    for grid, (bt, bh, bw) in (((8, 14, 14), (1, 2, 2)), ((8, 56, 56), (1, 8, 8))):
        dense = upsample_unit_mask(units, grid).view(3, 8, 7, bh, 7, bw)
        assert dense.shape[1] * bt == grid[0]
        expect = units[:, :, :, None, :, None].expand_as(dense)
        assert torch.equal(dense, expect)
    out = upsample_unit_mask(units, (8, 14, 14))
    assert torch.equal(out.sum(1), units.flatten(1).sum(1) * 4)


def test_tube_frame_and_image_block_masks():
    g = torch.Generator().manual_seed(0)
    tube = maskfeat_masks(2, (8, 7, 7), 0.4, "tube", generator=g)
    assert torch.equal(tube, tube[:, :1].expand_as(tube))  # one 2-D mask repeated over time
    assert (tube[:, 0].flatten(1).sum(1) <= 20).all()  # round(0.4 * 49)
    frame = maskfeat_masks(2, (8, 7, 7), 0.4, "frame", generator=g)
    per_t = frame.flatten(2)
    assert ((per_t.all(2)) | (~per_t.any(2))).all()  # whole time steps
    assert (per_t.all(2).sum(1) == 3).all()  # round(0.4 * 8)
    counts = [int(beit_block_mask((14, 14), 0.4, generator=torch.Generator().manual_seed(s)).sum()) for s in range(40)]
    assert max(counts) <= 78 and sum(counts) / len(counts) >= 65
    img = maskfeat_masks(2, (1, 14, 14), 0.4, "block", generator=torch.Generator().manual_seed(1))
    assert img.shape == (2, 1, 14, 14)
    assert torch.equal(img[0, 0], beit_block_mask((14, 14), 0.4, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError):
        maskfeat_masks(1, (8, 7, 7), 0.4, "block")


# --------------------------------------------------------------------------------------- targets


def test_pixel_targets_are_the_first_frame_of_each_cube_per_token():
    video = torch.randn(2, 3, 8, 16, 24)
    t = pixel_targets(video, (4, 2, 3), frame_stride=2)  # 4 HOG frames over 4 token times, 8x8 patches
    assert t.shape == (2, 24, 3 * 64)
    n = 2 * 6 + 1 * 3 + 2  # token (t=2, h=1, w=2)
    assert torch.equal(t[1, n], video[1, :, 4, 8:16, 16:24].reshape(-1))
    t2 = pixel_targets(video, (2, 2, 3), frame_stride=2)  # 2 of those frames per token time
    assert torch.equal(t2[0, 0], torch.cat([video[0, :, 0, :8, :8].reshape(-1), video[0, :, 2, :8, :8].reshape(-1)]))


def test_head_width_is_108_per_hog_frame():
    m = build_method(tiny_vit_recipe())
    assert m.target_dim == 108  # 2x2 cells x 9 bins x 3 channels
    assert build_method(tiny_vit_recipe(target="pixel")).target_dim == 3 * 8 * 8
    # Tubelets spanning 4 frames hold 2 HOG frames (stride 2): 216 values.
    r = tiny_vit_recipe()
    r.model.overrides["tubelet_size"] = 4
    assert build_method(r).target_dim == 216


# ------------------------------------------------------------------------------------------ loss


def test_masked_mse_uses_masked_tokens_only():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 10, 5, generator=g), torch.randn(2, 10, 5, generator=g)
    mask = torch.rand(2, 10, generator=g) < 0.4
    loss = masked_mse(pred, target, mask)
    changed = torch.where(mask[..., None], pred, pred + 100.0)
    assert torch.equal(masked_mse(changed, target, mask), loss)
    terms = [((pred[b, n] - target[b, n]) ** 2).mean() for b in range(2) for n in range(10) if mask[b, n]]
    assert torch.allclose(loss, torch.stack(terms).mean())
    assert masked_mse(pred, target, torch.zeros(2, 10, dtype=torch.bool)) == 0


def test_loss_equals_an_independent_computation():
    torch.manual_seed(0)
    m = build_method(tiny_vit_recipe())
    video = torch.randn(2, 3, 4, 16, 16)
    mask = maskfeat_masks(2, (2, 2, 2), 0.4, "cube", generator=torch.Generator().manual_seed(2))
    out = m({"video": video}, mask=mask)
    pred, _ = m.predict(video, mask)
    hog = HOGLayer(cell_size=4)
    terms = []
    for b in range(2):
        for t in range(2):
            cells = hog(video[b : b + 1, :, 2 * t])[0]  # frame 2t: the first of cube t; (3, 9, 4, 4)
            for h in range(2):
                for w in range(2):
                    if mask[b, t, h, w]:
                        target = cells[:, :, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2].reshape(-1)
                        terms.append(((pred[b, t * 4 + h * 2 + w] - target) ** 2).mean())
    assert len(terms) == int(mask.sum()) > 0
    assert torch.allclose(out["loss"], torch.stack(terms).mean(), atol=1e-6)


def test_loss_ignores_predictions_at_visible_tokens():
    torch.manual_seed(0)
    m = build_method(tiny_vit_recipe())
    video = torch.randn(2, 3, 4, 16, 16)
    mask = maskfeat_masks(2, (2, 2, 2), 0.4, "cube", generator=torch.Generator().manual_seed(5))
    base = m({"video": video}, mask=mask)["loss"]
    visible = ~mask.flatten(1)  # (B, N): units are tokens here
    hook = m.head.register_forward_hook(lambda mod, inp, out: out + 5.0 * visible[..., None])
    try:
        assert torch.equal(m({"video": video}, mask=mask)["loss"], base)
    finally:
        hook.remove()
    hook = m.head.register_forward_hook(lambda mod, inp, out: out + 5.0 * (~visible)[..., None])
    try:
        assert m({"video": video}, mask=mask)["loss"] > base + 1.0
    finally:
        hook.remove()


def test_vit_mask_token_replaces_the_masked_tubelets_entirely():
    torch.manual_seed(0)
    m = build_method(tiny_vit_recipe())
    m.eval()
    video = torch.randn(1, 3, 4, 16, 16)
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 1, 0, 1] = True  # token (t=1, h=0, w=1): frames 2-3, rows 0-7, columns 8-15
    pred, _ = m.predict(video, mask)
    edited = video.clone()
    edited[:, :, 2:4, 0:8, 8:16] += 3.0  # content under the mask never reaches the encoder
    assert torch.allclose(m.predict(edited, mask)[0], pred, atol=1e-6)
    edited[:, :, 0:2, 0:8, 0:8] += 3.0  # a visible tubelet does
    assert not torch.allclose(m.predict(edited, mask)[0], pred, atol=1e-3)


def test_gradients_reach_mask_token_head_and_backbone_and_repeated_sampling():
    m = build_method(tiny_vit_recipe())
    out = m({"video": torch.randn(2, 2, 3, 4, 16, 16)})  # (B, r, C, T, H, W)
    out["loss"].backward()
    assert m.mask_token.grad is not None and m.mask_token.grad.abs().sum() > 0
    assert m.head.weight.grad.abs().sum() > 0
    assert m.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert 0.2 < float(out["mask_fraction"]) <= 0.5


# ---------------------------------------------------------------------------------- MViT and CLI


def test_mvit_pretrains_without_last_q_stride_and_finetunes_from_it(tmp_path):
    from safetensors.torch import save_file

    from tubelet.methods import build_method as build_supervised

    model = {"name": "mvitv2_s", "num_frames": 8, "img_size": 64, "num_classes": 4,
             "overrides": {"depth": 5, "embed_dim": 16, "num_heads": 1, "transitions": [1, 3], "kv_stride": [1, 4, 4]}}
    m = build_method(from_dict({"model": model, "method": {"name": "maskfeat"}}))
    assert isinstance(m, MaskFeat) and m.backbone.cfg.q_stride_last_stage is False
    video = torch.randn(1, 3, 8, 64, 64)
    stem, out = m.grids(video)
    assert stem == (4, 16, 16) and out == (4, 8, 8)  # stride 8 kept through the last stage
    assert m.target_dim == 27 and m.unit_grid(out) == (4, 4, 4)  # stride-8 tokens own one 8x8 HOG cell
    m({"video": video})["loss"].backward()
    assert m.mask_token.grad.abs().sum() > 0
    # Fine-tuning restores the stride: the last block's relative tables change length and are resampled.
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in m.backbone.state_dict().items()}, str(path))
    ft_recipe = {"model": {**model, "checkpoint": str(path)}, "data": {"synthetic": {"num_classes": 4}}}
    ft = build_supervised(from_dict(ft_recipe))
    own, pre = ft.backbone.state_dict(), m.backbone.state_dict()
    assert own["blocks.4.attn.rel_pos_h"].shape[0] < pre["blocks.4.attn.rel_pos_h"].shape[0]
    assert torch.equal(own["blocks.2.attn.qkv.weight"], pre["blocks.2.attn.qkv.weight"])
    assert ft.classify(video).shape == (1, 4)


def test_shipped_recipes_load():
    names = sorted(p.stem for p in RECIPES.glob("maskfeat_*.yaml"))
    assert {"maskfeat_synthetic_pretrain", "maskfeat_synthetic_finetune", "maskfeat_synthetic_probe"} <= set(names)
    for name in names:
        r = load_recipe(name)
        assert r.run_dir


@pytest.mark.parametrize("name", ["maskfeat_mvitv2_s_k400_finetune", "maskfeat_mvitv2_l_k400_finetune"])
def test_mvit_finetune_recipes_average_then_normalise(name):
    # MaskFeat MViTv2 fine-tuning pools "mean_norm" (mean of patch tokens, then LN), not "mean" (LN, then mean)
    from tubelet.methods.backbone import build_backbone

    r = load_recipe(name)
    with torch.device("meta"):
        model = build_backbone(dataclasses.replace(r.model, checkpoint=None))  # the weights are not needed
    assert model.cfg.head_pool == "mean_norm"
    tokens = torch.randn(2, 1 + 5, model.embed_dim)
    model = model.to_empty(device="cpu")
    torch.nn.init.normal_(model.norm.weight)
    torch.nn.init.normal_(model.norm.bias)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), model.norm(tokens[:, 1:].mean(1)))


def test_cli_pretrain_writes_hog_report_then_finetunes(tmp_path, monkeypatch):
    from tubelet.cli.main import main

    monkeypatch.chdir(tmp_path)
    small = ["data.synthetic.num_videos=48", "data.batch_size=8", "trainer.max_steps=2",
             "trainer.enable_progress_bar=false"]
    assert main(["fit", "--config", "maskfeat_synthetic_pretrain", *small, "run_dir=pt"]) == 0
    assert (tmp_path / "pt" / "report" / "hog.png").stat().st_size > 10_000
    assert main(["fit", "--config", "maskfeat_synthetic_finetune", *small, "trainer.val_check_interval=2",
                 "model.checkpoint=pt/backbone.safetensors", "run_dir=ft"]) == 0
    assert (tmp_path / "ft" / "backbone.safetensors").is_file()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
