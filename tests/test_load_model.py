"""Self-describing weights: the model name and config in the safetensors metadata, ``tubelet.load_model``,
and the one-line errors for weights or training checkpoints of another model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import error_lines
import yaml
from test_engine import TINY_RECIPE

import tubelet
from tubelet.core.io import read_safetensors_metadata, save_safetensors
from tubelet.errors import CheckpointError
from tubelet.models import create_model, get_model_config
from tubelet.models.weights import describe_model, saved_variant

TINY = {"num_frames": 4, "img_size": 16, "num_classes": 4, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture
def run(tiny_run):
    return tiny_run  # conftest.tiny_run: a 4-step supervised run trained through the CLI


def test_metadata_round_trip(tmp_path):
    model = create_model("vit_tiny", **TINY)
    path = save_safetensors(model.state_dict(), tmp_path / "w.safetensors", metadata=describe_model(model))
    meta = read_safetensors_metadata(path)
    assert meta["tubelet_model"] == "vit_tiny" and meta["tubelet_num_classes"] == "4"
    assert json.loads(meta["tubelet_config"]) == json.loads(json.dumps(dataclasses.asdict(model.variant.config)))
    assert json.loads(meta["tubelet_config"])["embed_dim"] == 32
    assert saved_variant(path) == model.variant
    # tuple fields (MViTv2's kernels and strides) come back as tuples, so the configs compare equal
    mvit = get_model_config("mvitv2_s", num_classes=3)
    from tubelet.models.registry import ModelVariant, variant_from_fields

    back = variant_from_fields("mvitv2_s", json.loads(json.dumps(dataclasses.asdict(mvit))), "x")
    assert back == ModelVariant("mvitv2_s", mvit) and isinstance(back.config.patch_kernel, tuple)


def test_run_files_carry_the_model(run):
    for name, prefix in (("backbone.safetensors", ""), ("method.safetensors", "backbone.")):
        meta = read_safetensors_metadata(run / name)
        assert meta["tubelet_model"] == "vit_tiny" and meta["tubelet_prefix"] == prefix, name
        saved = json.loads(meta["tubelet_config"])
        assert {k: saved[k] for k in TINY} == TINY, name
    assert read_safetensors_metadata(run / "method.safetensors")["tubelet_method"] == "supervised"


def test_load_model_from_run_dir_and_files_gives_the_trained_logits(run):
    from tubelet.models.weights import read_state_dict

    method_sd = read_state_dict(run / "method.safetensors")
    reference = create_model("vit_tiny", **TINY)
    reference.load_state_dict({k[len("backbone."):]: v for k, v in method_sd.items() if k.startswith("backbone.")})
    reference.eval()
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x)
        for source in (run, run / "backbone.safetensors", run / "method.safetensors"):
            model = tubelet.load_model(source)
            assert not model.training and model.variant == reference.variant, source
            assert torch.equal(model(x), want), source


def test_load_model_run_dir_without_metadata_uses_config_yaml(run, tmp_path):
    """A run folder whose backbone file does not say what it holds is rebuilt from its config.yaml."""
    import shutil

    from tubelet.models.weights import read_state_dict

    old = tmp_path / "old_run"
    old.mkdir()
    shutil.copy(run / "config.yaml", old / "config.yaml")
    state = read_state_dict(run / "backbone.safetensors")
    save_safetensors(state, old / "backbone.safetensors", metadata={"format": "tubelet-backbone"})
    model = tubelet.load_model(old)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.variant.config.embed_dim == 32
    with pytest.raises(CheckpointError, match="does not say which model"):
        tubelet.load_model(old / "backbone.safetensors")


def test_create_model_with_another_models_file_names_it(run):
    path = str(run / "backbone.safetensors")
    with pytest.raises(CheckpointError) as exc:
        create_model("vit_small", checkpoint=path, **TINY)
    msg = str(exc.value)
    assert "\n" not in msg and "saved from model 'vit_tiny', not 'vit_small'" in msg
    with pytest.raises(CheckpointError) as exc:
        create_model("vit_tiny", checkpoint=path, num_classes=4)  # the options of the run are not repeated
    msg = str(exc.value)
    assert "\n" not in msg and "saved from vit_tiny(" in msg and "embed_dim=32" in msg and "embed_dim=192" in msg
    # the right name and options load it, as before
    assert create_model("vit_tiny", checkpoint=path, **TINY).variant.config.depth == 2


def test_create_model_with_a_file_without_metadata_behaves_as_before(tmp_path):
    path = save_safetensors(create_model("vit_tiny", **TINY).state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError) as exc:
        create_model("vit_tiny", checkpoint=str(path), num_classes=4)
    assert str(exc.value).startswith(f"{path}: weights do not fit VisionTransformer\nshape mismatches:")
    # without metadata, another model's name with the same shapes is not detected (nothing says otherwise)
    assert create_model("vit_small", checkpoint=str(path), **TINY).variant.name == "vit_small"


def _fit_cli(tmp_path, capsys, model: dict, resume: str) -> tuple[int, str]:
    from tubelet.cli.main import main

    cfg = tmp_path / "other.yaml"
    recipe = {**TINY_RECIPE, "model": {**TINY_RECIPE["model"], **model}, "run_dir": str(tmp_path / "other")}
    cfg.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    rc = main(["fit", "--config", str(cfg), "--resume", resume])
    return rc, capsys.readouterr().err


def test_resume_with_another_models_checkpoint_is_one_line(run, tmp_path, capsys):
    """The recipe a checkpoint recorded names the model: resuming it with another model (or other options)
    is refused before anything is built, naming the key and both values."""
    ckpt = run / "checkpoints" / "step=000004.ckpt"
    rc, err = _fit_cli(tmp_path, capsys, {"name": "vit_small"}, str(ckpt))
    lines = error_lines(err)
    assert rc == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"tubelet fit: error: {ckpt}: checkpoint of another run: model.name recorded "
                               "'vit_tiny', now 'vit_small'; a resumed run continues its recorded recipe")
    # the same model name with other shapes: the option that differs, with both values
    overrides = {**TINY_RECIPE["model"]["overrides"], "embed_dim": 48}
    rc, err = _fit_cli(tmp_path, capsys, {"overrides": overrides}, str(ckpt))
    lines = error_lines(err)
    assert rc == 1 and len(lines) == 1, err
    assert "checkpoint of another run: model.overrides.embed_dim recorded 32, now 48;" in lines[0]
    assert not (tmp_path / "other" / "config.yaml").exists()  # failed before the run folder was written


def test_create_model_refuses_a_file_saved_at_another_norm_epsilon(tmp_path):
    """attn_norm_eps holds no tensor: loading a file saved at 1e-5 into a 1e-6 model would give other logits."""
    kw = dict(num_classes=3, depth=2, embed_dim=16, num_heads=1, num_frames=4, img_size=32)
    model = create_model("mvitv1_b_16x4", attn_norm_eps=1e-5, **kw)
    path = save_safetensors(model.state_dict(), tmp_path / "w.safetensors", metadata=describe_model(model))
    with pytest.raises(CheckpointError, match=r"saved with attn_norm_eps=1e-05, this model has attn_norm_eps=None"):
        create_model("mvitv1_b_16x4", checkpoint=str(path), **kw)
    same = create_model("mvitv1_b_16x4", checkpoint=str(path), attn_norm_eps=1e-5, **kw)
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(same.eval()(x), model.eval()(x))
    assert tubelet.load_model(path).variant.config.attn_norm_eps == 1e-5
