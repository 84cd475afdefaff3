"""Checkpoint files: atomic writes, weights-only loading, refusal of code, completeness."""

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from toys import ToyMethod, ToyVideos, toy_recipe

from tubelet.engine import fit
from tubelet.core.ckpt_format import find_latest_checkpoint, is_complete, load_checkpoint, save_checkpoint
from tubelet.core.rng import capture_rng_state, restore_rng_state
from tubelet.errors import CheckpointError


def _state(step=3):
    w = torch.randn(4, 3)
    return {
        "epoch": 1, "global_step": step,
        "state_dict": {"method.w": w, "method.tied": w, "method.b": torch.arange(3.0)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}],
        "loops": {"fit_loop": {"combined_loader": [{"epoch": 1, "consumed": 8}]}},
        "rng": capture_rng_state(),
        "np_array": np.arange(5),
        "np_scalar": np.float32(2.5),
    }


def test_round_trip_and_weights_only(tmp_path):
    ckpt = save_checkpoint(_state(), tmp_path / "step=000003.ckpt")
    weights = list(tmp_path.glob("step=000003-*.safetensors"))
    assert len(weights) == 1 and is_complete(ckpt)
    raw = torch.load(ckpt, weights_only=True)  # the state file alone loads without any allow-listing
    assert "state_dict" not in raw and raw["tubelet"]["weights_file"] == weights[0].name
    back = load_checkpoint(ckpt)
    ref = _state()
    assert set(back["state_dict"]) == {"method.w", "method.tied", "method.b"}
    assert torch.equal(back["state_dict"]["method.w"], back["state_dict"]["method.tied"])
    assert torch.equal(back["optimizer_states"][0]["state"][0]["exp_avg"], torch.ones(2))
    assert back["optimizer_states"][0]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["np_array"], torch.arange(5)) and back["np_scalar"] == 2.5
    assert back["loops"] == ref["loops"]


def test_rng_states_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint({"rng": capture_rng_state(), "state_dict": {}}, tmp_path / "a.ckpt")
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "a.ckpt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_unsupported_objects_are_refused_at_save(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint.hparams.obj"):
        save_checkpoint({"state_dict": {}, "hparams": {"obj": object()}}, tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_naming_the_file(tmp_path):
    good = save_checkpoint(_state(), tmp_path / "step=000003.ckpt")
    marker = tmp_path / "pwned"
    state = torch.load(good, weights_only=True)
    state["evil"] = _Evil(marker)
    torch.save(state, good)  # a full pickle: loading it unrestricted would run os.system
    with pytest.raises(CheckpointError, match=str(good)) as err:
        load_checkpoint(good)
    assert "refused" in str(err.value)
    assert not marker.exists()
    assert not is_complete(good)
    # a raw pickle file (not a torch zip) is refused as well
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError, match="raw.ckpt"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_truncated_files_give_checkpoint_error(tmp_path):
    ckpt = save_checkpoint(_state(), tmp_path / "step=000003.ckpt")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(ckpt)
    assert not is_complete(ckpt)
    ckpt2 = save_checkpoint(_state(), tmp_path / "step=000004.ckpt")
    (weights,) = tmp_path.glob("step=000004-*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(ckpt2)
    assert not is_complete(ckpt2)
    assert find_latest_checkpoint(tmp_path) is None


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = save_checkpoint(_state(2), tmp_path / "step=000002.ckpt")
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith(".ckpt"):  # the weights land, then the state write "crashes"
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(4), tmp_path / "step=000004.ckpt")
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(calls) == 2
    assert not (tmp_path / "step=000004.ckpt").exists()
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("step=000004-*"))
    # a half-written temp file from a killed process is ignored too
    (tmp_path / ".step=000006.ckpt.deadbeef.tmp").write_bytes(b"PK\x03\x04 partial")
    (tmp_path / "step=000008.ckpt").write_bytes(b"PK\x03\x04 partial")  # renamed but garbage
    assert find_latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first)["global_step"] == 2


def test_kill_during_write_leaves_previous_loadable(tmp_path):
    """A process killed (SIGKILL) in the middle of writing: the folder still yields the old checkpoint."""
    first = save_checkpoint(_state(2), tmp_path / "step=000002.ckpt")
    code = (
        "import os, torch, sys\n"
        "from tubelet.core import io as c\n"
        "def boom(f):\n"
        "    f.write(b'PK' + b'0' * 1000); f.flush(); os.kill(os.getpid(), 9)\n"
        "c.atomic_write(sys.argv[1], boom)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "step=000004.ckpt")], timeout=60)
    assert proc.returncode == -9
    assert list(tmp_path.glob(".step=000004.ckpt.*.tmp"))  # the partial temp file is left behind...
    assert find_latest_checkpoint(tmp_path) == first  # ...and ignored
    assert load_checkpoint(first)["global_step"] == 2


def test_keep_last_k_and_overwrite(tmp_path):
    torch.manual_seed(0)
    recipe = toy_recipe(tmp_path / "run", max_steps=8, checkpoint_every_n_steps=2, keep_last_k=2)
    result = fit(recipe, method=ToyMethod(), datasets={"train": ToyVideos(12)})
    ckdir = tmp_path / "run" / "checkpoints"
    names = sorted(p.name for p in ckdir.glob("*.ckpt"))
    assert names == ["step=000006.ckpt", "step=000008.ckpt"]
    assert len(list(ckdir.glob("*.safetensors"))) == 2  # removed checkpoints take their weights along
    assert [p.name for p in result.checkpoints] == names
    assert find_latest_checkpoint(ckdir).name == "step=000008.ckpt"
    # overwriting a checkpoint replaces its weights file
    state = load_checkpoint(ckdir / "step=000008.ckpt")
    save_checkpoint(state, ckdir / "step=000008.ckpt")
    assert len(list(ckdir.glob("step=000008-*.safetensors"))) == 1
    assert is_complete(ckdir / "step=000008.ckpt")


def test_removing_a_checkpoint_leaves_similarly_named_ones(tmp_path):
    from tubelet.core.ckpt_format import remove_checkpoint

    a = save_checkpoint(_state(), tmp_path / "last.ckpt")
    b = save_checkpoint(_state(), tmp_path / "last-v1.ckpt")
    remove_checkpoint(a)
    assert not a.exists() and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert is_complete(b)


def test_training_checkpoint_feeds_model_weight_loading(tmp_path):
    """``read_state_dict`` (used by create_model and model.checkpoint) understands step=N.ckpt files."""
    from tubelet.models.weights import read_state_dict

    sd = {"method.backbone.w": torch.randn(2, 2), "method.head.b": torch.zeros(3)}
    ckpt = save_checkpoint({"state_dict": sd, "global_step": 5}, tmp_path / "step=000005.ckpt")
    got = read_state_dict(ckpt)
    assert set(got) == {"backbone.w", "head.b"} and torch.equal(got["backbone.w"], sd["method.backbone.w"])
    (weights,) = tmp_path.glob("step=000005-*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(ckpt)


def test_weights_checksum_is_recorded_and_verified_when_loading(tmp_path):
    """A weights file changed in place (same size, one bit flipped: bit rot, a copy gone wrong) is refused
    with one line naming it, instead of loading other weights than the checkpoint was written with."""
    import hashlib

    ckpt = save_checkpoint(_state(), tmp_path / "step=000003.ckpt")
    (weights,) = tmp_path.glob("step=000003-*.safetensors")
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    msg = str(err.value)
    assert msg.startswith(f"{weights}: ") and "sha256" in msg and "\n" not in msg
    assert torch.load(ckpt, weights_only=True)["tubelet"]["weights_sha256"] == sha
    from tubelet.core.ckpt_format import checkpoint_problem

    assert is_complete(ckpt)  # the cheap check sees a whole file...
    assert checkpoint_problem(ckpt).startswith("checksum mismatch")  # ...the full one does not


@pytest.mark.parametrize("name", ["../outside.safetensors", "/ABS/outside.safetensors", "sub/x.safetensors", ".."])
def test_weights_file_name_must_be_a_file_in_the_checkpoint_folder(tmp_path, name):
    """A crafted state naming a weights file elsewhere would make loading read any file: refused, naming the
    checkpoint and the name it gave."""
    from tubelet.core.ckpt_format import checkpoint_shapes, checkpoint_weights

    inner = tmp_path / "ckpts"
    inner.mkdir()
    ckpt = save_checkpoint(_state(), inner / "step=000003.ckpt")
    (weights,) = inner.glob("step=000003-*.safetensors")
    outside = tmp_path / "outside.safetensors"
    weights.rename(outside)  # a readable weights file, outside the checkpoint's folder
    name = name.replace("/ABS", str(tmp_path))
    state = torch.load(ckpt, weights_only=True)
    state["tubelet"]["weights_file"] = name
    torch.save(state, ckpt)
    for load in (load_checkpoint, checkpoint_weights, checkpoint_shapes):
        with pytest.raises(CheckpointError) as err:
            load(ckpt)
        msg = str(err.value)
        assert msg.startswith(f"{ckpt}: refused") and repr(name) in msg and str(inner) in msg, msg
    assert not is_complete(ckpt) and find_latest_checkpoint(inner) is None


def test_stale_files_of_killed_writes_are_found_and_removed(tmp_path):
    """Temporary files and weights files without their checkpoint go; a checkpoint's own weights and a
    weights file beside an unreadable .ckpt stay."""
    from tubelet.core.ckpt_format import remove_stale_files

    good = save_checkpoint(_state(2), tmp_path / "step=000002.ckpt")
    (own,) = tmp_path.glob("step=000002-*.safetensors")
    stale = [tmp_path / ".step=000004.ckpt.0123abcd.tmp", tmp_path / ".step=000004-89abcdef.safetensors.deadbeef.tmp",
             tmp_path / "step=000004-89abcdef.safetensors",  # its .ckpt never landed
             tmp_path / "step=000002-00000000.safetensors"]  # beside a .ckpt that names another file
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / "step=000006.ckpt").write_bytes(b"garbage")
    kept = [tmp_path / "step=000006-11111111.safetensors", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in kept:
        p.write_bytes(b"x")
    assert sorted(remove_stale_files(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept + [good, own])
    assert load_checkpoint(good)["global_step"] == 2
