"""Recipe loading: overrides, type errors, misspelt keys, _base_ inheritance, effective-config round trip."""

import pytest
import yaml

from tubelet.config import dump_recipe, from_dict, load_recipe, parse_overrides, read_recipe_tree
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
                              "16-mixed, 16-true, auto")
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


# -- keys written twice ------------------------------------------------------------------------


def test_a_key_written_twice_is_an_error_naming_both_lines(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("trainer:\n  max_steps: 5\noptim:\n  lr: 0.1\ntrainer:\n  max_steps: 7\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(f)
    assert str(err.value) == (f"{f}: key 'trainer' is written twice, at lines 1 and 5; YAML would keep only the "
                              "second: keep one")
    f.write_text("optim:\n  lr: 0.1\n  weight_decay: 0.0\n  lr: 0.2\n")  # nested
    with pytest.raises(ConfigError, match=r"key 'optim.lr' is written twice, at lines 2 and 4"):
        load_recipe(f)
    f.write_text("data:\n  augment:\n    rrc_scale: [0.2, 1.0]\n    hflip: 0.5\n    rrc_scale: [0.5, 1.0]\n")
    with pytest.raises(ConfigError, match=r"key 'data.augment.rrc_scale' is written twice, at lines 3 and 5"):
        load_recipe(f)
    f.write_text("seed: 1\nrun_dir: a\n0x1: 2\n1: 3\n")  # keys equal once constructed (0x1 == 1)
    with pytest.raises(ConfigError, match=r"key '1' is written twice, at lines 3 and 4"):
        load_recipe(f)
    f.write_text("model: {name: vit_tiny, name: vit_small}\n")  # flow style, one line
    with pytest.raises(ConfigError, match=r"key 'model.name' is written twice, at lines 1 and 1"):
        load_recipe(f)
    # a base file is held to the same rule, and named
    (tmp_path / "base.yaml").write_text("seed: 1\nrun_dir: a\nseed: 2\n")
    child = _write(tmp_path / "child.yaml", {"_base_": "base.yaml", "seed": 3})
    with pytest.raises(ConfigError) as err:
        load_recipe(child)
    assert str(err.value).startswith(f"{tmp_path / 'base.yaml'}: key 'seed' is written twice, at lines 1 and 3")
    with pytest.raises(ConfigError, match="written twice"):
        read_recipe_tree(child)  # what `tubelet recipes NAME` shows


def test_yaml_merge_keys_may_still_be_overridden(tmp_path):
    # '<<' merges are YAML's own way to repeat a mapping: the mapping's own key wins, as safe_load does
    from tubelet.config.loader import _load_yaml

    f = tmp_path / "r.yaml"
    f.write_text("common: &c {max_steps: 5, keep_last_k: 2}\ntrainer:\n  <<: *c\n  max_steps: 9\n")
    assert _load_yaml(f.read_text()) == yaml.safe_load(f.read_text())
    assert _load_yaml("a: [1, {b: 2}]\nc: 1.5\nd: ~\n") == {"a": [1, {"b": 2}], "c": 1.5, "d": None}


def test_an_override_given_twice_takes_the_last_value():
    r = load_recipe(None, ["optim.lr=1e-3", "trainer.max_steps=3", "optim.lr=2e-3"])
    assert r.optim.lr == 2e-3 and r.trainer.max_steps == 3
    # a mapping value merges with the keys given before it
    r = load_recipe(None, ["optim.lr=1e-3", "optim={momentum: 0.8}"])
    assert (r.optim.lr, r.optim.momentum) == (1e-3, 0.8)
    with pytest.raises(ConfigError, match=r"^override 'optim=\{lr: 1, lr: 2\}': key 'lr' is written twice in the value$"):
        load_recipe(None, ["optim={lr: 1, lr: 2}"])


# -- _base_ stays in the recipe's folder -------------------------------------------------------


def test_base_must_stay_in_the_recipes_folder(tmp_path):
    folder = tmp_path / "recipes"
    (folder / "sub").mkdir(parents=True)
    _write(folder / "sub" / "b.yaml", {"seed": 4})
    _write(tmp_path / "outside.yaml", {"seed": 5})
    assert load_recipe(_write(folder / "r.yaml", {"_base_": "sub/b.yaml"})).seed == 4  # below the folder
    assert load_recipe(_write(folder / "r.yaml", {"_base_": "sub/../sub/b.yaml"})).seed == 4
    _write(folder / "sub" / "c.yaml", {"_base_": "../common.yaml", "seed": 6})  # a base's base, still in the folder
    _write(folder / "common.yaml", {"run_dir": "x"})
    assert load_recipe(_write(folder / "r.yaml", {"_base_": "sub/c.yaml"})).run_dir == "x"
    _write(folder / "sub" / "c.yaml", {"_base_": "../../outside.yaml"})
    with pytest.raises(ConfigError, match=rf"^{folder / 'sub' / 'c.yaml'}: '_base_: ../../outside.yaml' leads outside "
                                          rf"the recipe's folder {folder};"):
        load_recipe(folder / "r.yaml")
    assert load_recipe(_write(folder / "r.yaml", {"_base_": "quickstart"})).model.num_classes == 4  # shipped
    assert load_recipe(_write(folder / "r.yaml", {"_base_": "quickstart.yaml"})).model.num_classes == 4
    r = folder / "r.yaml"
    for base in ("../outside.yaml", str(tmp_path / "outside.yaml"), "sub/../../outside.yaml"):
        _write(r, {"_base_": base})
        with pytest.raises(ConfigError) as err:
            load_recipe(r)
        assert str(err.value) == (f"{r}: '_base_: {base}' leads outside the recipe's folder {folder}; a base must "
                                  "be a file in that folder (or below it) or a shipped recipe name")
    (folder / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    _write(r, {"_base_": "link.yaml"})
    with pytest.raises(ConfigError) as err:
        load_recipe(r)
    assert str(err.value) == (f"{r}: '_base_: link.yaml' is a symlink to {tmp_path / 'outside.yaml'}, outside the "
                              f"recipe's folder {folder}; a base must be a file in that folder (or below it) or a "
                              "shipped recipe name")
    (folder / "quickstart.yaml").symlink_to(tmp_path / "outside.yaml")  # a link out is refused even named like a shipped one
    _write(r, {"_base_": "quickstart.yaml"})
    with pytest.raises(ConfigError, match="symlink"):
        load_recipe(r)
    (folder / "quickstart.yaml").unlink()
    (folder / "sublink").symlink_to(tmp_path, target_is_directory=True)  # a linked folder out
    _write(r, {"_base_": "sublink/outside.yaml"})
    with pytest.raises(ConfigError, match=r"'_base_: sublink/outside.yaml' is a symlink to .*outside.yaml, outside"):
        load_recipe(r)
    _write(r, {"_base_": "quickstrat"})
    with pytest.raises(ConfigError) as err:
        load_recipe(r)
    assert str(err.value) == f"{r}: '_base_: quickstrat' is neither a file in {folder} nor a shipped recipe; did you mean 'quickstart'?"
    _write(r, {"_base_": ["a.yaml"]})
    with pytest.raises(ConfigError, match=r"'_base_' must be a shipped recipe name or a file name, got \['a.yaml'\]"):
        load_recipe(r)


def test_a_shipped_recipes_base_chain_still_loads():
    from tubelet.config import list_recipes

    for name in list_recipes():
        load_recipe(name)


# -- every number has a range, checked from YAML, overrides and Python alike --------------------


def _sections():
    """(dotted prefix, dataclass) of every section a recipe can hold, method configs included."""
    import dataclasses as dc

    from tubelet.config import method_config_class, method_names
    from tubelet.config.schema import AugmentConfig, DataConfig, ModelConfig, OptimConfig, RhoConfig, SyntheticConfig
    from tubelet.config.schema import SOTDataConfig, TrainerConfig

    out = [("", Recipe), ("model.", ModelConfig), ("data.", DataConfig), ("data.augment.", AugmentConfig),
           ("data.synthetic.", SyntheticConfig), ("data.rho.", RhoConfig), ("data.sot.", SOTDataConfig),
           ("optim.", OptimConfig),
           ("trainer.", TrainerConfig)]
    # the shipped methods' sections (another test file may register its own toy method in this process)
    out += [("method.", c) for c in map(method_config_class, method_names()) if c.__module__.startswith("tubelet.")]
    assert all(dc.is_dataclass(c) for _, c in out)
    return out


def _numeric(hint) -> bool:
    import typing

    if hint is bool:
        return False
    if hint in (int, float):
        return True
    if typing.get_origin(hint) is typing.Literal:
        return False
    return any(_numeric(a) for a in typing.get_args(hint))


def test_every_number_of_every_section_has_a_bound():
    import dataclasses as dc
    import typing

    missing = []
    for prefix, cls in _sections():
        hints = typing.get_type_hints(cls)
        missing += [f"{prefix}{f.name}" for f in dc.fields(cls) if _numeric(hints[f.name]) and "bound" not in f.metadata]
    assert missing == []


def _bad_values(f):
    """Values just outside field ``f``'s bound, and NaN / inf where the field is a float."""
    import math

    b = f.metadata["bound"]
    integer = "float" not in str(f.type)
    out = []
    if b.low is not None:
        out.append(b.low if b.open_low else b.low - 1 if integer or b.low >= 1 else b.low - 0.5)
    if b.high is not None:
        out.append(b.high if b.open_high else b.high + 1)
    if not integer:
        out += [math.nan, math.inf]
    return [v for v in out if v != b.also and not (v == -1 and b.also == -1)]


def _bad_cases():
    import dataclasses as dc

    for prefix, cls in _sections():
        for f in dc.fields(cls):
            if "bound" not in f.metadata:
                continue
            for v in _bad_values(f):
                if f.metadata.get("length") is not None or isinstance(f.default_factory, type(lambda: 0)):
                    default = f.default_factory() if f.default is dc.MISSING else f.default
                    if isinstance(default, list):
                        yield pytest.param(prefix, cls, f.name, [v] * len(default), f"{f.name}[0]",
                                           id=f"{prefix}{f.name}={v}")
                        continue
                yield pytest.param(prefix, cls, f.name, v, f.name, id=f"{prefix}{f.name}={v}")


@pytest.mark.parametrize("prefix, cls, name, value, bad", list(_bad_cases()))
def test_a_number_outside_its_range_fails_in_python_yaml_and_overrides(tmp_path, prefix, cls, name, value, bad):
    import math

    method = {"name": cls().name} if prefix == "method." else {}
    # built in Python: the field is named by its recipe key
    with pytest.raises(ConfigError) as err:
        cls(**{name: value})
    shown = value[0] if isinstance(value, list) else value
    assert str(err.value).startswith(f"{prefix}{bad} must be ") and str(err.value).endswith(f"got {shown!r}")
    if isinstance(shown, float) and not math.isfinite(shown):
        assert "finite" in str(err.value)
    # in a file: the dotted key and the file
    tree: dict = {"method": dict(method)} if method else {}
    node = tree
    for part in prefix.rstrip(".").split(".") if prefix else []:
        node = node.setdefault(part, {})
    node[name] = [float(v) if isinstance(v, float) else v for v in value] if isinstance(value, list) else value
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError) as err:
        load_recipe(f)
    assert str(err.value).startswith(f"'{prefix}{bad}' in {f} must be ")
    # on the command line: the override as typed
    over = [f"method.name={method['name']}"] if method else []
    typed = f"{prefix}{name}={yaml.safe_dump(node[name], default_flow_style=True).strip().removesuffix('...').strip()}"
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [*over, typed])
    assert str(err.value).startswith(f"{typed} (command line): ")


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=0", "greater than 0"),
    ("optim.lr=-1e-3", "greater than 0"),
    ("optim.lr=nan", "a finite number greater than 0"),
    ("optim.lr=.inf", "a finite number greater than 0"),
    ("optim.lr=inf", "a finite number greater than 0"),
    ("optim.weight_decay=-0.1", "at least 0"),
    ("optim.momentum=1", "in [0, 1)"),
    ("optim.ema_decay=1", "in (0, 1)"),
    ("optim.layer_decay=0", "in (0, 1]"),
    ("data.augment.hflip=1.5", "in [0, 1]"),
    ("data.augment.label_smoothing=1", "in [0, 1)"),
    ("data.augment.mixup_alpha=-0.2", "at least 0"),
    ("data.synthetic.num_classes=1", "in [2, 8]"),
    ("data.test_crops=2", "one of 1, 3"),
    ("trainer.devices=0", "at least 1 (or -1: every device the accelerator has)"),
    ("trainer.collective_timeout_s=.inf", "a finite number greater than 0"),
    ("seed=-1", "in [0, 4294967295]"),
])
def test_named_bounds(override, expected):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert str(err.value) == f"{override} (command line): expected {expected}"


def test_method_bounds_and_rules():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["method.name=mae_st", "method.mask_ratio=1"])
    assert str(err.value) == "method.mask_ratio=1 (command line): expected in (0, 1)"
    with pytest.raises(ConfigError, match=r"^method.mask_ratio must be in \(0, 1\), got 0.0$"):
        MAESTConfig(mask_ratio=0.0)
    with pytest.raises(ConfigError, match=r"^method.decoder_heads must be a divisor of method.decoder_dim \(96\)"):
        MAESTConfig(decoder_dim=96, decoder_heads=5)
    with pytest.raises(ConfigError, match=r"^method.mask_block must be a list of 3 ints, got \[2, 2\]$"):
        MAESTConfig(mask_block=[2, 2])
    with pytest.raises(ConfigError, match=r"^method.mask_type must be one of random, tube, frame, cube, got 'cubes'$"):
        MAESTConfig(mask_type="cubes")
    with pytest.raises(ConfigError, match=r"^method.head_dropout must be a number in \[0, 1\), got '0.1'$"):
        SupervisedConfig(head_dropout="0.1")
    with pytest.raises(ConfigError, match=r"^method.decoder_depth must be an int at least 0, got 2.5$"):
        MAESTConfig(decoder_depth=2.5)


def test_python_built_recipes_are_checked_too():
    import dataclasses as dc

    from tubelet.config.schema import AugmentConfig, DataConfig, OptimConfig, SyntheticConfig, TrainerConfig

    with pytest.raises(ConfigError, match=r"^optim.lr must be a finite number greater than 0, got nan$"):
        OptimConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"^data.batch_size must be at least 1, got 0$"):
        dc.replace(DataConfig(), batch_size=0)  # replace builds a new section: checked as well
    with pytest.raises(ConfigError, match=r"^trainer.precision must be one of 32-true, bf16-mixed, "):
        TrainerConfig(precision="fp16")
    with pytest.raises(ConfigError, match=r"^data.augment.rrc_scale must be a \[low, high\] range with low <= high, "
                                          r"got \[1.0, 0.5\]$"):
        AugmentConfig(rrc_scale=[1.0, 0.5])
    with pytest.raises(ConfigError, match=r"^data.std\[1\] must be greater than 0, got 0$"):
        DataConfig(std=[0.2, 0, 0.2])
    with pytest.raises(ConfigError, match=r"^data.mean must be a list of 3 numbers, got \[0.5\]$"):
        DataConfig(mean=[0.5])
    with pytest.raises(ConfigError, match=r"^data.synthetic.min_objects must be at most data.synthetic.max_objects \(2\), "
                                          r"got 3$"):
        SyntheticConfig(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs must be set when trainer.max_steps is -1"):
        TrainerConfig(max_steps=-1)
    assert TrainerConfig(max_steps=-1, max_epochs=3).max_epochs == 3 and TrainerConfig(devices="auto").devices == "auto"
    assert TrainerConfig(devices=-1).devices == -1 and AugmentConfig(short_side=[300]).short_side == [300]


def test_cross_field_rules_are_judged_on_the_merged_recipe(tmp_path):
    f = _write(tmp_path / "r.yaml", {"data": {"synthetic": {"max_objects": 5}}})
    assert load_recipe(f, ["data.synthetic.min_objects=4"]).data.synthetic.min_objects == 4  # 4 > the default 3: fine
    with pytest.raises(ConfigError) as err:
        load_recipe(f, ["data.synthetic.min_objects=6"])
    assert str(err.value) == (f"'data.synthetic.min_objects' in {f} with the command-line overrides must be at most "
                              "data.synthetic.max_objects (5), got 6")
    f = _write(tmp_path / "s.yaml", {"trainer": {"max_steps": -1}})
    with pytest.raises(ConfigError) as err:
        load_recipe(f)
    assert str(err.value) == (f"'trainer.max_epochs' in {f} must be set when trainer.max_steps is -1 (no step limit), "
                              "got None")
    assert load_recipe(f, ["trainer.max_epochs=2"]).trainer.max_epochs == 2
