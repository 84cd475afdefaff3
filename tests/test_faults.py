"""Faults: SIGKILL of `tubelet fit` at a random step then `--resume auto` (bitwise equal to an uninterrupted
run), SIGKILL inside a checkpoint write (the previous one stays good), non-finite losses and gradients."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from toys import ToyMethod, ToyVideos, toy_recipe

from tubelet.engine import fit
from tubelet.core.ckpt_format import checkpoint_step, find_latest_checkpoint, is_complete, load_checkpoint
from tubelet.errors import TubeletError

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "fault_runner.py"
MAX_STEPS = 16

RECIPE = {
    "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 16, "num_classes": 4,
              "overrides": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "drop_path_rate": 0.1}},
    "data": {"kind": "synthetic", "num_frames": 4, "crop_size": 16, "batch_size": 4,
             "synthetic": {"num_videos": 40, "num_classes": 4, "size": 20, "frames": 8}},
    "method": {"name": "supervised", "head_dropout": 0.2},
    "optim": {"lr": 1.0e-3, "warmup_steps": 2},
    "trainer": {"max_steps": MAX_STEPS, "checkpoint_every_n_steps": 2, "keep_last_k": 2, "num_threads": 1,
                "enable_progress_bar": False, "log_every_n_steps": 1, "accelerator": "cpu", "val_check_interval": 5},
}


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in this process; same code and thread count as the CLI subprocesses)."""
    from tubelet.cli.main import main

    tmp = tmp_path_factory.mktemp("ref")
    cfg = tmp / "r.yaml"
    cfg.write_text(yaml.safe_dump(RECIPE))
    assert main(["fit", "--config", str(cfg), f"run_dir={tmp / 'run'}"]) == 0
    return cfg, load_file(tmp / "run" / "method.safetensors")


def _assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_step_then_resume_auto_is_bitwise_exact(tmp_path, reference, seed):
    from tubelet.cli.main import main

    cfg, ref = reference
    run = tmp_path / "run"
    target = random.Random(seed).choice(range(2, MAX_STEPS - 3, 2))  # kill once this checkpoint is complete
    proc = subprocess.Popen([sys.executable, str(RUNNER), "fit", "--config", str(cfg), f"run_dir={run}"],
                            env=_env(TUBELET_TEST_STEP_SLEEP="0.15"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / f"step={target:06d}.ckpt"
    deadline = time.time() + 240
    while not (ckpt.exists() and is_complete(ckpt)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    latest = find_latest_checkpoint(run / "checkpoints")
    killed_at = checkpoint_step(latest)
    assert target <= killed_at < MAX_STEPS  # killed mid-run, after the target step
    assert not (run / "method.safetensors").exists()
    assert main(["fit", "--config", str(cfg), f"run_dir={run}", "--resume", "auto"]) == 0
    _assert_bitwise(ref, load_file(run / "method.safetensors"))


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, reference):
    """The process is blocked inside the write of step 4 (its weights and temporary state file are on disk,
    the rename is not done) when it is killed: step 2 stays the newest complete checkpoint, loads, and
    resuming from it ends bitwise equal to the uninterrupted run."""
    from tubelet.cli.main import main

    cfg, ref = reference
    run = tmp_path / "run"
    marker = tmp_path / "blocked"
    proc = subprocess.Popen([sys.executable, str(RUNNER), "fit", "--config", str(cfg), f"run_dir={run}"],
                            env=_env(TUBELET_TEST_BLOCK_CKPT="step=000004", TUBELET_TEST_MARKER=str(marker)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    partial = Path(marker.read_text())
    assert partial.exists() and partial.name.startswith(".step=000004.ckpt.")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    ckdir = run / "checkpoints"
    assert not (ckdir / "step=000004.ckpt").exists()
    assert list(ckdir.glob("step=000004-*.safetensors"))  # the weights had landed: an orphan, never used
    latest = find_latest_checkpoint(ckdir)
    assert latest == ckdir / "step=000002.ckpt"
    assert load_checkpoint(latest)["global_step"] == 2
    assert main(["fit", "--config", str(cfg), f"run_dir={run}", "--resume", "auto"]) == 0
    _assert_bitwise(ref, load_file(run / "method.safetensors"))
    assert len(list(ckdir.glob("step=000004-*.safetensors"))) == 0  # removed with step 4 by keep_last_k


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class PoisonGrad(ToyMethod):
    """Finite loss; the gradient of call ``poison_grad_at`` is NaN."""

    poison_grad_at = None

    def forward(self, batch):
        out = super().forward(batch)
        if self.calls == self.poison_grad_at:
            out["loss"] = _NaNGrad.apply(out["loss"])
        return out


def _data():
    return {"train": ToyVideos(12), "val": None}


@pytest.mark.parametrize("k", [3, 5])
def test_nan_loss_at_step_k_names_step_and_last_checkpoint(tmp_path, k):
    method = ToyMethod()
    method.poison_at = k + 1  # the (k+1)-th forward is step k (0-based)
    with pytest.raises(TubeletError) as err:
        fit(toy_recipe(tmp_path / "run", max_steps=8), method=method, datasets=_data())
    msg = str(err.value)
    last = tmp_path / "run" / "checkpoints" / f"step={k // 2 * 2:06d}.ckpt"
    assert f"non-finite loss (nan) at step {k} " in msg and f"last good checkpoint: {last}" in msg


@pytest.mark.parametrize("k", [1, 4])
def test_nan_gradient_at_step_k_names_step_and_last_checkpoint(tmp_path, k):
    method = PoisonGrad()
    method.poison_grad_at = k + 1
    recipe = toy_recipe(tmp_path / "run", max_steps=8)
    recipe.optim.clip_grad = 1.0  # clipping a NaN norm would spread NaN to every weight
    with pytest.raises(TubeletError) as err:
        fit(recipe, method=method, datasets=_data())
    msg = str(err.value)
    # the checkpoint of step k holds the weights that gave the NaN: the one before it is the good one
    last = "none saved yet" if k < 2 else str(tmp_path / "run" / "checkpoints" / f"step={(k - 1) // 2 * 2:06d}.ckpt")
    assert f"non-finite gradient (norm nan) at step {k} " in msg and f"last good checkpoint: {last}" in msg
    assert (f"(step={k:06d}.ckpt holds the weights that gave this value)" in msg) == (k % 2 == 0)
    assert all(torch.isfinite(p).all() for p in method.parameters())  # stopped before the update


def test_nan_gradient_skip_policy_leaves_weights_and_counts(tmp_path):
    method = PoisonGrad()
    method.poison_grad_at = 3
    recipe = toy_recipe(tmp_path / "a", max_steps=6, nonfinite="skip", max_skipped_steps=1)
    result = fit(recipe, method=method, datasets=_data())
    assert result.metrics["skipped_steps"] == 1 and result.metrics["global_step"] == 6
    assert all(torch.isfinite(p).all() for p in method.parameters())

    class Twice(PoisonGrad):
        def forward(self, batch):
            self.poison_grad_at = self.calls + 1 if self.calls in (1, 3) else None
            return super().forward(batch)

    with pytest.raises(TubeletError, match=r"non-finite gradient .* at step 3 .*after skipping 1 steps"):
        fit(toy_recipe(tmp_path / "b", max_steps=6, nonfinite="skip", max_skipped_steps=1), method=Twice(),
            datasets=_data())
