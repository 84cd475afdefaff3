"""Recipe loading: overrides, type errors, misspelt keys, _base_ inheritance, effective-config round trip."""

import pytest
import yaml

from tubelet.config import dump_recipe, from_dict, load_recipe, parse_overrides
from tubelet.methods.mae_st import MAESTConfig
from tubelet.methods.supervised import SupervisedConfig
from tubelet.config.schema import Recipe
from tubelet.errors import ConfigError


def _write(path, tree):
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_and_file(tmp_path):
    assert load_recipe() == Recipe()
    f = _write(tmp_path / "r.yaml", {"optim": {"lr": "1e-3", "betas": [0.9, 0.95]}, "trainer": {"max_steps": 7}})
    r = load_recipe(f)
    assert r.optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string; the schema makes it a float
    assert r.optim.betas == [0.9, 0.95] and r.trainer.max_steps == 7
    assert r.trainer.keep_last_k == Recipe().trainer.keep_last_k  # untouched defaults stay


def test_dotted_overrides(tmp_path):
    f = _write(tmp_path / "r.yaml", {"optim": {"lr": 0.1}})
    r = load_recipe(f, ["optim.lr=0.5", "trainer.precision=bf16-mixed", "data.augment.mixup_alpha=0.8",
                        "optim.clip_grad=null", "trainer.devices=2"])
    assert r.optim.lr == 0.5 and r.trainer.precision == "bf16-mixed" and r.data.augment.mixup_alpha == 0.8
    assert r.optim.clip_grad is None and r.trainer.devices == 2
    assert parse_overrides(["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_recipe(f, ["optim.lr"])


def test_type_errors_name_key_and_file(tmp_path):
    f = _write(tmp_path / "r.yaml", {"trainer": {"max_steps": "many"}})
    with pytest.raises(ConfigError) as err:
        load_recipe(f)
    assert "'trainer.max_steps'" in str(err.value) and str(f) in str(err.value) and "int" in str(err.value)
    with pytest.raises(ConfigError, match="'data.batch_size' .*must be int, got 1.5"):
        load_recipe(None, ["data.batch_size=1.5"])
    with pytest.raises(ConfigError, match="'trainer.deterministic'.*must be bool"):
        from_dict({"trainer": {"deterministic": "yes"}})


def test_misspelt_key_names_file_and_closest_key(tmp_path):
    f = _write(tmp_path / "r.yaml", {"optim": {"warmup_step": 5}})
    with pytest.raises(ConfigError) as err:
        load_recipe(f)
    msg = str(err.value)
    assert "unknown key 'optim.warmup_step'" in msg and str(f) in msg and "did you mean 'optim.warmup_steps'" in msg
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.keep_last' in command line; did you mean 'trainer.keep_last_k'"):
        load_recipe(None, ["trainer.keep_last=2"])
    with pytest.raises(ConfigError, match="unknown key 'optimm' .*did you mean 'optim'"):
        load_recipe(_write(tmp_path / "s.yaml", {"optimm": {}}))


def test_base_inheritance_and_polymorphic_method(tmp_path):
    _write(tmp_path / "base.yaml", {"optim": {"lr": 0.1, "weight_decay": 0.3}, "method": {"name": "mae_st", "mask_ratio": 0.75},
                                     "trainer": {"max_steps": 5}})
    child = _write(tmp_path / "child.yaml", {"_base_": "base.yaml", "optim": {"lr": 0.2}})
    r = load_recipe(child)
    assert r.optim.lr == 0.2 and r.optim.weight_decay == 0.3 and r.trainer.max_steps == 5
    assert isinstance(r.method, MAESTConfig) and r.method.mask_ratio == 0.75
    assert isinstance(load_recipe(None).method, SupervisedConfig)
    with pytest.raises(ConfigError, match="unknown key 'method.mask_ratio'"):
        load_recipe(None, ["method.mask_ratio=0.5"])  # supervised has no mask ratio
    _write(tmp_path / "loop.yaml", {"_base_": "loop.yaml"})
    with pytest.raises(ConfigError, match="loops back"):
        load_recipe(tmp_path / "loop.yaml")


def test_effective_config_round_trip(tmp_path):
    _write(tmp_path / "base.yaml", {"method": {"name": "mae_st"}, "data": {"batch_size": 3}})
    child = _write(tmp_path / "child.yaml", {"_base_": "base.yaml", "seed": 7})
    r = load_recipe(child, ["optim.layer_decay=0.75", "trainer.nonfinite=skip"])
    out = dump_recipe(r, tmp_path / "run" / "config.yaml")
    again = load_recipe(out)
    assert again == r and again.seed == 7 and again.data.batch_size == 3 and again.optim.layer_decay == 0.75
    assert isinstance(again.method, MAESTConfig)
