"""The NaN guard: a learning rate that overflows the parameters' dtype is a one-line error before
training, and when the loss blew up before turning non-finite, the error says at which step it began to
diverge and names the checkpoint from before it."""

import re

import pytest
import torch
import yaml
from conftest import error_lines
from toys import ToyMethod, ToyVideos, toy_recipe

from tubelet.engine import fit
from tubelet.engine.module import LossTrend
from tubelet.errors import TubeletError

torch.set_num_threads(1)


def _onset(losses):
    trend = LossTrend(window=8)
    for step, x in enumerate(losses):
        trend.update(torch.tensor(x), step)
    return trend.onset()


def test_loss_trend_finds_where_the_last_blow_up_began():
    normal = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02, 0.98]
    assert _onset(normal) is None
    assert _onset(normal + [30.0, 1.0, 1.1]) is None  # a spike that came back down
    # x3 per step from step 8: 3, 9, 27 ... the first step over 10x the median (1.0) is step 10
    step, value, ref = _onset(normal + [3.0 ** k for k in range(1, 8)])
    assert (step, value) == (10, 27.0) and ref == pytest.approx(1.0, abs=0.03)
    # the window does not take in the blow-up: a slow rise longer than the window is still one stretch
    step, _, _ = _onset(normal + [20.0 * 1.1 ** k for k in range(30)])
    assert step == 8
    # a stretch that ended, then a new one: the new one counts
    assert _onset(normal + [50.0, 60.0, 1.0, 1.0, 40.0, 80.0])[0] == 12
    # losses that are negative by design (a negative cosine) judge nothing
    assert _onset([-0.9, -0.95, -0.92, -0.9, 0.5, 3.0]) is None


class Diverging(ToyMethod):
    """The loss is multiplied by 100 more at every step from step ``start`` on, then is NaN at step ``nan``."""

    start, nan = 5, 9

    def forward(self, batch):
        out = super().forward(batch)
        step = self.calls - 1  # one forward per step
        if step >= self.start:
            out["loss"] = out["loss"] * 100.0 ** (step - self.start + 1)
        if step == self.nan:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_after_divergence_names_the_step_and_the_checkpoint_before(tmp_path):
    recipe = toy_recipe(tmp_path / "run", max_steps=12, keep_last_k=10)
    with pytest.raises(TubeletError) as err:
        fit(recipe, method=Diverging(), datasets={"train": ToyVideos(12), "val": None})
    msg = str(err.value)
    ckpts = tmp_path / "run" / "checkpoints"
    assert "\n" not in msg
    assert msg.startswith("non-finite loss (nan) at step 9 (epoch 3, batch 0); the loss began to diverge at step 5 (")
    assert "over 10x the median" in msg and "and above that at every step since)" in msg
    assert msg.endswith(f"; last good checkpoint: {ckpts / 'step=000004.ckpt'} "
                        "(step=000008.ckpt holds weights from after the divergence began)")


def test_sudden_nan_keeps_the_plain_message(tmp_path):
    method = ToyMethod()
    method.poison_at = 8  # step 7: no rise before
    with pytest.raises(TubeletError) as err:
        fit(toy_recipe(tmp_path / "run", max_steps=10, keep_last_k=10), method=method,
            datasets={"train": ToyVideos(12), "val": None})
    assert "diverge" not in str(err.value)
    assert str(err.value).endswith(f"last good checkpoint: {tmp_path / 'run' / 'checkpoints' / 'step=000006.ckpt'}")


def test_divergence_without_a_checkpoint_before_it(tmp_path):
    method = Diverging()
    method.start, method.nan = 3, 6
    with pytest.raises(TubeletError) as err:
        fit(toy_recipe(tmp_path / "run", max_steps=8, checkpoint_every_n_steps=4, keep_last_k=10), method=method,
            datasets={"train": ToyVideos(12), "val": None})
    assert re.fullmatch(
        r"non-finite loss \(nan\) at step 6 \(epoch 2, batch 0\); the loss began to diverge at step 3 \(([\d.]+), "
        r"over 10x the median ([\d.]+) of the steps before, and above that at every step since\); last good "
        r"checkpoint: none on disk from before step 3 \(step=000004.ckpt holds weights from after the divergence "
        r"began\)", str(err.value)), str(err.value)


@pytest.mark.parametrize("overrides,key", [
    (["optim.lr=1e39"], "optim.lr=1e+39"),
    (["optim.lr=1e38"], "optim.lr=1e+38"),  # representable, but AdamW's first step is lr / (1 - beta1)
    (["optim.name=sgd", "optim.lr=1e39"], "optim.lr=1e+39"),
    (["optim.warmup_lr=1e39", "optim.warmup_steps=2"], "optim.warmup_lr=1e+39"),
])
def test_learning_rate_that_overflows_float32_is_one_line(tmp_path, capsys, overrides, key):
    from test_write_errors import TINY

    from tubelet.cli.main import main

    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["fit", "--config", str(cfg), f"run_dir={tmp_path / 'run'}", *overrides]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"tubelet fit: error: {key} is too large: the update it gives")
    assert "overflows float32, whose largest value is 3.4e+38; it must be below" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
