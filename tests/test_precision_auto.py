"""trainer.precision=auto: bf16-mixed where this device's bf16 matmuls are faster, else 32-true, resolved once
and recorded so that a resume runs what config.yaml says."""

import pytest
import torch
from test_engine import Crash
from toys import ToyMethod, ToyVideos, toy_recipe

from tubelet.config.loader import load_recipe
from tubelet.engine import device, fit
from tubelet.errors import ConfigError


def _speedup(monkeypatch, value):
    monkeypatch.setattr(device, "bf16_matmul_speedup", lambda: value)


def test_auto_follows_the_measured_matmul_ratio(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _speedup(monkeypatch, 2.2)  # a Zen 4
    assert device.resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    _speedup(monkeypatch, 0.5)  # a Xeon without AMX
    precision, why = device.resolve_precision("auto", "cpu")
    assert precision == "32-true" and "0.50x" in why
    _speedup(monkeypatch, device.BF16_MIN_SPEEDUP)
    assert device.resolve_precision("auto", "cpu")[0] == "bf16-mixed"
    for p in ("32-true", "bf16-mixed", "bf16-true"):  # anything else is kept
        assert device.resolve_precision(p, "cpu") == (p, "")


def test_auto_is_refused_where_each_process_would_measure_alone(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trainer.precision=auto .* 2 processes"):
        device.resolve_precision("auto", "cpu")


def test_unresolved_auto_is_never_fp32_by_accident():
    with pytest.raises(ConfigError, match="not been resolved"):
        device.autocast_dtype("auto")


def test_the_measurement_times_both_dtypes():
    r = device.bf16_matmul_speedup.__wrapped__(size=64, repeats=2)
    assert 0 < r < 1000


def _train(recipe, **kw):
    torch.manual_seed(0)
    return fit(recipe, method=ToyMethod(), datasets={"train": ToyVideos(12), "val": ToyVideos(8)}, **kw)


def test_fit_records_the_resolved_precision_and_a_resume_keeps_it(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = tmp_path / "run"
    recipe = toy_recipe(run, max_steps=4, precision="auto")
    _speedup(monkeypatch, 2.0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(recipe, callbacks=[Crash(2)])
    assert load_recipe(run / "config.yaml").trainer.precision == "bf16-mixed"
    # the machine now measures otherwise (a neighbour's load, another host): the run continues as recorded
    _speedup(monkeypatch, 0.5)
    result = _train(toy_recipe(run, max_steps=4, precision="auto"), resume="auto")
    assert result.metrics["global_step"] == 4
    assert load_recipe(run / "config.yaml").trainer.precision == "bf16-mixed"
    # a fresh run measures anew
    fresh = tmp_path / "fresh"
    _train(toy_recipe(fresh, max_steps=2, precision="auto"))
    assert load_recipe(fresh / "config.yaml").trainer.precision == "32-true"
