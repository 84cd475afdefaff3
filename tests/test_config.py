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
    with pytest.raises(ConfigError, match=r"^data\.batch_size=1\.5 \(command line\): expected int$"):
        load_recipe(None, ["data.batch_size=1.5"])
    with pytest.raises(ConfigError, match="'trainer.deterministic'.*must be bool"):
        from_dict({"trainer": {"deterministic": "yes"}})


def test_an_override_type_error_names_the_override_not_the_recipe(tmp_path):
    f = _write(tmp_path / "r.yaml", {"data": {"batch_size": 2}})
    with pytest.raises(ConfigError) as err:
        load_recipe(f, ["data.batch_size=abc"])
    assert str(err.value) == "data.batch_size=abc (command line): expected int"
    with pytest.raises(ConfigError) as err:
        load_recipe(f, ["optim.betas=[0.9, x]"])
    assert str(err.value) == "optim.betas=[0.9, x] (command line): 'optim.betas[1]' expected float, got 'x'"
    with pytest.raises(ConfigError) as err:
        load_recipe(f, ["trainer.nonfinite=skp"])
    assert str(err.value) == "trainer.nonfinite=skp (command line): expected one of stop, skip; did you mean 'skip'?"
    with pytest.raises(ConfigError) as err:  # the same mistake in the file names the file
        load_recipe(_write(tmp_path / "s.yaml", {"data": {"batch_size": "abc"}}))
    assert str(err.value) == f"'data.batch_size' in {tmp_path / 's.yaml'} must be int, got 'abc'"
    with pytest.raises(ConfigError, match=r"^unknown method.name 'mae' in command line; did you mean 'mae_st'\?"):
        load_recipe(f, ["method.name=mae"])


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=-4", "at least 1"),
    ("data.batch_size=0", "at least 1"),
    ("data.num_frames=0", "at least 1"),
    ("data.crop_size=-224", "at least 1"),
    ("data.num_workers=-1", "at least 0"),
    ("data.test_clips=0", "at least 1"),
    ("data.synthetic.num_videos=0", "at least 1"),
    ("data.max_failure_fraction=1.5", "in [0, 1]"),
    ("model.drop_path_rate=1.0", "in [0, 1)"),
    ("optim.base_lr=0", "greater than 0"),
    ("trainer.max_steps=0", "at least 1 (or -1: no step limit, trainer.max_epochs ends training)"),
    ("trainer.keep_last_k=0", "at least 1"),
])
def test_sizes_and_counts_out_of_range_fail_at_load(tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert str(err.value) == f"{override} (command line): expected {expected}"
    key, value = override.split("=")
    section, _, leaf = key.rpartition(".")
    tree: dict = {}
    node = tree
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    f = _write(tmp_path / "r.yaml", tree)  # written in a file, the error names the file
    with pytest.raises(ConfigError) as err:
        load_recipe(f)
    assert str(err.value) == f"'{key}' in {f} must be {expected}, got {yaml.safe_load(value)!r}"


def test_bounds_accept_their_edges():
    r = load_recipe(None, ["data.num_workers=0", "trainer.max_steps=-1", "trainer.max_epochs=2",
                           "data.max_failure_fraction=1", "data.batch_size=1"])
    assert (r.data.num_workers, r.trainer.max_steps, r.data.max_failure_fraction, r.data.batch_size) == (0, -1, 1.0, 1)


def test_an_unknown_precision_lists_the_accepted_ones():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["trainer.precision=fp16"])
    assert str(err.value) == ("trainer.precision=fp16 (command line): expected one of 32-true, bf16-mixed, bf16-true, "
                              "16-mixed, 16-true")
    assert load_recipe(None, ["trainer.precision=16-mixed"]).trainer.precision == "16-mixed"


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
