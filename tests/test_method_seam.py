"""The method seam: methods registered with their configs, one backbone builder with one loading
policy, the run context, enumerated options checked at load, and a method added from its own file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from tubelet.config import from_dict, method_config_class
from safetensors.torch import save_file
from tubelet.errors import CheckpointError, ConfigError
from tubelet.methods import RunContext, build_method, list_methods

TINY = {"name": "vit_tiny", "num_classes": 8, "num_frames": 4, "img_size": 16,
        "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}


def _recipe(method: dict, **model) -> object:
    return from_dict({"model": {**TINY, **model}, "method": method, "data": {"synthetic": {"num_classes": 8}}})


def test_every_shipped_method_is_registered_with_its_config():
    assert {"supervised", "mae_st", "linear_probe", "maskfeat", "contrastive"} <= set(list_methods())
    for name in list_methods():
        assert method_config_class(name)().name == name


@pytest.mark.parametrize("method", [{"name": "mae_st"}, {"name": "linear_probe"},
                                    {"name": "maskfeat", "mask_type": "cube"}, {"name": "supervised"}])
def test_a_method_checkpoint_loads_into_every_method(tmp_path, method):
    # a method.safetensors (keys under "backbone.") given as model.checkpoint: every method loads the
    # same backbone tensors (mae_st used to load nothing, silently)
    torch.manual_seed(1)
    src = build_method(_recipe({"name": "mae_st"}))
    path = tmp_path / "method.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    m = build_method(_recipe(method, checkpoint=str(path)))
    own = m.backbone.state_dict()
    body = {k: v for k, v in src.backbone.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    assert body and all(torch.equal(own[k], v) for k, v in body.items())
    assert m.backbone.load_report.prefix == "backbone."
    assert set(m.backbone.load_report.loaded) >= set(body)


@pytest.mark.parametrize("method", ["mae_st", "maskfeat", "supervised", "linear_probe"])
def test_a_checkpoint_that_fits_nothing_is_an_error(tmp_path, method):
    path = tmp_path / "other.safetensors"
    save_file({"decoder.weight": torch.zeros(3, 3), "something.else": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no tensor fits"):
        build_method(_recipe({"name": method}, checkpoint=str(path)))


def test_a_checkpoint_missing_backbone_tensors_names_them(tmp_path):
    state = build_method(_recipe({"name": "mae_st"})).backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("blocks.0.attn")}
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match="blocks.0.attn"):
        build_method(_recipe({"name": "mae_st"}, checkpoint=str(path)))


@pytest.mark.parametrize("key, value, hint", [
    ("method.mask_type", "tubes", "did you mean 'tube'"),
    ("method.target_frames", "all", "one of first, cube"),
    ("data.kind", "manifests", "did you mean 'manifest'"),
    ("optim.schedule", "linear", "cosine"),
])
def test_enumerated_options_are_checked_at_load(key, value, hint):
    section, field = key.split(".")
    raw = {"method": {"name": "mae_st"}}
    raw.setdefault(section, {})[field] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        from_dict(raw, "r.yaml")
    assert hint in str(info.value)


def test_run_context_from_the_training_set():
    r = _recipe({"name": "supervised"})
    r.data.batch_size = 4
    r.trainer.max_steps = 30
    ctx = RunContext.from_recipe(r, train_size=42, num_classes=8)
    assert (ctx.total_steps, ctx.steps_per_epoch, ctx.world_size, ctx.num_classes) == (30, 10, 1, 8)
    r.trainer.devices, r.trainer.accumulate_grad_batches = 2, 2
    assert RunContext.from_recipe(r, train_size=42).steps_per_epoch == 2  # 21 per rank -> 5 batches -> 2 steps


# ---------------------------------------------------------------------------------------- a new method
CALLS: list[str] = []


def _register_toy():
    from tubelet.config.registry import MethodConfig
    from tubelet.methods import register_method
    from tubelet.methods.backbone import build_backbone

    from tubelet.config.bounds import POSITIVE_REAL, bounded

    @dataclass
    class ToyMethodConfig(MethodConfig):
        name: str = "toy_method"
        scale: float = bounded(1.0, POSITIVE_REAL)

    class Seen(Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            CALLS.append(f"end at step {trainer.global_step}")

    class Toy(nn.Module):
        def __init__(self, backbone: nn.Module, scale: float) -> None:
            super().__init__()
            self.backbone, self.scale = backbone, scale

        def forward(self, batch: dict) -> dict:
            video = batch["video"]
            video = video.flatten(0, 1) if video.ndim == 6 else video
            return {"loss": self.scale * self.backbone(video).square().mean()}

        def callbacks(self) -> list[Callback]:
            return [Seen()]

    @register_method("toy_method", ToyMethodConfig)
    def build(recipe, context):
        CALLS.append(f"context total_steps={context.total_steps} steps_per_epoch={context.steps_per_epoch}")
        return Toy(build_backbone(recipe.model), recipe.method.scale)


def test_a_method_of_its_own_file_trains_from_the_cli(tmp_path):
    from tubelet.cli.main import main

    if "toy_method" not in list_methods():
        _register_toy()
    CALLS.clear()
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(
        "_base_: demo\n"
        "model: {name: vit_tiny, num_classes: 4, num_frames: 4, img_size: 16, "
        "overrides: {patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}}\n"
        "method: {name: toy_method, scale: 0.5}\n"
        "data: {batch_size: 2, num_frames: 4, crop_size: 16, synthetic: {num_videos: 16, num_classes: 4, size: 16,"
        " frames: 8}}\n"
        "trainer: {max_steps: 2, log_every_n_steps: 1, checkpoint_every_n_steps: 2, enable_progress_bar: false}\n",
        encoding="utf-8")
    assert main(["fit", str(recipe), f"run_dir={tmp_path / 'run'}"]) == 0
    assert CALLS[0].startswith("context total_steps=2 steps_per_epoch=")
    assert CALLS[-1] == "end at step 2"
    assert (tmp_path / "run" / "method.safetensors").is_file()
    assert dataclasses.is_dataclass(method_config_class("toy_method"))


@pytest.mark.parametrize("name, kw, stem, out", [
    ("vit_tiny", dict(num_frames=4, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2), (2, 4, 4), (2, 4, 4)),
    ("mvitv2_s", dict(num_frames=4, img_size=64, depth=2, transitions=(1,), embed_dim=8, num_heads=1), (2, 16, 16),
     (2, 8, 8)),
])
def test_backbones_keep_the_backbone_contract(name, kw, stem, out):
    from tubelet.models import create_model
    from tubelet.models.base import Backbone

    m = create_model(name, num_classes=0, **kw)
    assert isinstance(m, Backbone)
    assert m.in_chans == 3 and m.token_grids(4, kw["img_size"], kw["img_size"]) == (stem, out)
    x = torch.randn(1, 3, 4, kw["img_size"], kw["img_size"])
    tokens = m.forward_features(x)
    assert tokens.shape == (1, m.num_prefix_tokens + out[0] * out[1] * out[2], m.embed_dim)
    assert m.stem_dim == (m.embed_dim if name.startswith("vit") else 8)
