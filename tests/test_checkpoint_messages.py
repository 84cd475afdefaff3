"""What a user reads when a file is not a tubelet checkpoint: one line naming the file and what it is
(a pickle that would run code, an empty file, a legacy torch.save file, a plain Lightning checkpoint, a
bare state_dict), never torch's advice to load it again without ``weights_only``."""

import argparse
import os
import pickle

import lightning
import pytest
import torch
import yaml
from conftest import error_lines
from torch import nn

from tubelet.core.ckpt_format import (
    checkpoint_shapes,
    checkpoint_weights,
    load_checkpoint,
    read_training_state,
    safe_torch_load,
)
from tubelet.engine.evaluate import load_method_weights
from tubelet.engine.fit import resolve_resume
from tubelet.errors import CheckpointError
from tubelet.models.convert import read_foreign_state_dict
from tubelet.models.weights import read_state_dict

torch.set_num_threads(1)


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resume(path):
    from tubelet.config.loader import from_dict

    return resolve_resume(from_dict({"run_dir": str(path.parent / "run")}), path)


# every reader of torch files, and the ones that expect a tubelet training checkpoint
ANY_READER = {
    "safe_torch_load": safe_torch_load,
    "read_state_dict": read_state_dict,
    "read_foreign_state_dict": read_foreign_state_dict,
}
TRAINING_READER = {
    "read_training_state": read_training_state,
    "load_checkpoint": load_checkpoint,
    "checkpoint_weights": checkpoint_weights,
    "checkpoint_shapes": checkpoint_shapes,
    "load_method_weights": lambda p: load_method_weights(nn.Linear(2, 2), p),
    "resolve_resume": _resume,
}
ALL_READERS = {**ANY_READER, **TRAINING_READER}


def _message(load, path) -> str:
    with pytest.raises(CheckpointError) as err:
        load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    # torch's advice (retry with weights_only=False, allow-list the class) would run the payload
    assert "weights_only" not in msg and "safe_globals" not in msg and "trusted source" not in msg, msg
    return msg


@pytest.fixture
def pickles(tmp_path):
    marker = tmp_path / "pwned"
    files = {}
    files["code.ckpt"] = tmp_path / "code.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": _Evil(marker)}, files["code.ckpt"])
    files["namespace.pt"] = tmp_path / "namespace.pt"  # the hparams object of old Lightning checkpoints
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hparams": argparse.Namespace(lr=0.1)}, files["namespace.pt"])
    files["raw.bin"] = tmp_path / "raw.bin"
    files["raw.bin"].write_bytes(pickle.dumps({"w": torch.zeros(2), "evil": _Evil(marker)}))
    yield files
    assert not marker.exists()


def test_pickles_are_refused_naming_what_they_would_import(pickles):
    for name, load in ALL_READERS.items():
        msg = _message(load, pickles["code.ckpt"])
        assert "refused: a pickle, not " in msg and "(the first object it would import: posix.system)" in msg, (name, msg)
        assert "it was not loaded" in msg
        msg = _message(load, pickles["namespace.pt"])
        assert "refused: a pickle, not " in msg and "import: argparse.Namespace)" in msg, (name, msg)
        msg = _message(load, pickles["raw.bin"])
        assert "refused: a pickle, not " in msg and "written with pickle.dump, not torch.save" in msg, (name, msg)


def test_empty_and_damaged_files_are_named_as_such(tmp_path):
    empty = tmp_path / "step=000002.ckpt"
    empty.touch()
    damaged = tmp_path / "half.pt"
    torch.save({"w": torch.zeros(64)}, damaged)
    damaged.write_bytes(damaged.read_bytes()[:300])
    other = tmp_path / "notes.pt"
    other.write_text("hello, not a checkpoint\n")
    for name, load in ALL_READERS.items():
        assert "the file is empty (0 bytes" in _message(load, empty), name
        msg = _message(load, damaged)
        assert "not a readable checkpoint (truncated or corrupt?): PytorchStreamReader failed reading zip archive" in msg
        assert "starts with neither a zip archive (torch.save) nor a pickle header" in _message(load, other), name


@pytest.fixture
def foreign(tmp_path):
    """A legacy (pre-1.6) torch.save file, a plain Lightning checkpoint and a bare state_dict."""
    weights = {"backbone.w": torch.arange(4.0), "head.b": torch.ones(2)}
    legacy = tmp_path / "legacy.pth"
    torch.save(weights, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "epoch=3-step=120.ckpt"  # what Lightning's own checkpointing writes
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": lightning.__version__,
                "state_dict": weights, "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []},
               plain)
    bare = tmp_path / "model.pt"
    torch.save(weights, bare)
    return weights, legacy, plain, bare


def test_safetensors_under_another_name(tmp_path, foreign):
    from tubelet.core.io import save_safetensors

    weights = foreign[0]
    path = save_safetensors(weights, tmp_path / "step=000010.ckpt")
    for name, load in TRAINING_READER.items():
        msg = _message(load, path)
        assert msg == f"{path}: a safetensors weights file, not a tubelet checkpoint (a torch.save file); load its " \
                      "weights with model.checkpoint or tubelet.load_model", (name, msg)
    for load in (read_state_dict, read_foreign_state_dict):  # where weights are expected, it is read as what it is
        got = load(path)
        assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)


def test_foreign_files_where_a_tubelet_checkpoint_is_expected(foreign):
    weights, legacy, plain, bare = foreign
    for name, load in TRAINING_READER.items():
        msg = _message(load, legacy)
        assert "a legacy torch.save file (the format before torch 1.6, not a zip archive), not a tubelet " \
               "training checkpoint" in msg, (name, msg)
        msg = _message(load, plain)
        assert f"a plain Lightning checkpoint (Lightning {lightning.__version__}), not a tubelet training " \
               "checkpoint (it has no 'tubelet' record)" in msg, (name, msg)
        msg = _message(load, bare)
        assert "a bare state_dict (2 tensors, e.g. 'backbone.w'), not a tubelet training checkpoint" in msg
        for m in (msg, _message(load, legacy), _message(load, plain)):  # and what to do with it
            assert "set model.checkpoint to it" in m and "`tubelet convert`" in m
    # where weights are expected, the same files load (weights only, the legacy file too)
    for path in (legacy, plain, bare):
        got = read_state_dict(path)
        assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)


def test_cli_names_a_lightning_checkpoint_and_a_pickle(tmp_path, foreign, pickles, capsys):
    from tubelet.cli.main import main

    _, legacy, plain, _ = foreign
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "trainer": {"max_steps": 1}}))
    for path, expect in [(plain, "a plain Lightning checkpoint"), (legacy, "a legacy torch.save file"),
                         (pickles["code.ckpt"], "refused: a pickle, not a tubelet checkpoint")]:
        assert main(["fit", "--config", str(cfg), "--resume", str(path)]) == 1
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith(f"tubelet fit: error: {path}: {expect}"), lines
    assert main(["convert", str(pickles["code.ckpt"]), str(tmp_path / "out.safetensors"), "--from", "mae_st"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "refused: a pickle, not a checkpoint of tensors" in line and "weights_only" not in line
    assert not (tmp_path / "out.safetensors").exists()
