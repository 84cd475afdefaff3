"""A full disk or a read-only folder is a one-line error naming the file, and leaves what was on disk
before: checkpoints, safetensors exports, config.yaml, metrics.json, the CSV log, labels.txt,
bad_files.txt and the report. The disk is simulated: files opened for writing under a folder accept
``budget`` bytes in all, then every write raises ``OSError(ENOSPC)`` (opening for writing truncates, as
on a real full disk)."""

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from conftest import error_lines

from tubelet.core.ckpt_format import find_latest_checkpoint, load_checkpoint, save_checkpoint
from tubelet.core.io import atomic_write, save_safetensors
from tubelet.errors import TubeletError, WriteError

torch.set_num_threads(1)
TV_SMALL = Path(__file__).resolve().parent / "fixtures" / "mvit_tv_small.safetensors"
TV_META = TV_SMALL.with_suffix(".json")


class _FullFile:
    def __init__(self, f, budget: list[int], code: int) -> None:
        self._f, self._budget, self._code = f, budget, code

    def write(self, data):
        if len(data) > self._budget[0]:
            self._budget[0] = 0
            raise OSError(self._code, os.strerror(self._code))
        self._budget[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def full_disk(monkeypatch, folder: Path, budget: int = 0, code: int = errno.ENOSPC, at_open: bool = False,
              only=lambda path: True) -> None:
    """Writes under ``folder`` (paths for which ``only`` holds) fail with ``code`` after ``budget`` bytes;
    ``at_open``: opening such a file for writing fails (a read-only folder)."""
    real_open = builtins.open
    left = [budget]

    def fake_open(file, mode="r", *args, **kwargs):
        writing = any(c in mode for c in "wax+")
        path = Path(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else None
        ours = writing and path is not None and path.resolve().is_relative_to(folder.resolve()) and only(path)
        if ours and at_open:
            raise OSError(code, os.strerror(code), str(path))
        f = real_open(file, mode, *args, **kwargs)
        return _FullFile(f, left, code) if ours else f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


def _assert_one_line(exc: BaseException, path: Path, reason: str) -> None:
    msg = str(exc)
    assert isinstance(exc, WriteError) and isinstance(exc, OSError), type(exc)
    assert msg == f"{path}: cannot write: {reason}", msg


FULL = "no space left on the device (disk full); free space there or write to another disk"


@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, FULL),
    (errno.EDQUOT, "disk quota exceeded; free space there or write to another disk"),
    (errno.EROFS, "the file system is read-only; write to a writable folder"),
    (errno.EACCES, "permission denied: the folder is not writable by this user; write to a writable folder"),
])
def test_checkpoint_write_refused_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch, code, reason):
    """torch.save turns a failed write into 'RuntimeError: unexpected pos ...': the error must still say
    disk full (or read-only ...) and name the checkpoint; the previous checkpoint stays the latest."""
    state = {"global_step": 2, "state_dict": {"method.w": torch.randn(64, 64)},
             "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(64, 64)}}, "param_groups": []}]}
    first = save_checkpoint(state, tmp_path / "step=000002.ckpt")
    # the weights file fits; the disk fills in the middle of the state file
    full_disk(monkeypatch, tmp_path, budget=2000, code=code, only=lambda p: ".step=000004.ckpt." in p.name)
    with pytest.raises(TubeletError) as err:
        save_checkpoint({**state, "global_step": 4}, tmp_path / "step=000004.ckpt")
    _assert_one_line(err.value, tmp_path / "step=000004.ckpt", reason)
    assert err.value.errno == code
    monkeypatch.undo()
    assert not (tmp_path / "step=000004.ckpt").exists() and not list(tmp_path.glob(".*.tmp"))
    assert not list(tmp_path.glob("step=000004-*.safetensors"))  # its weights went with it
    assert find_latest_checkpoint(tmp_path) == first and load_checkpoint(first)["global_step"] == 2


def test_fsync_that_finds_the_disk_full(tmp_path, monkeypatch):
    """Delayed allocation: writes succeed and fsync reports ENOSPC."""
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(WriteError) as err:
        atomic_write(target, lambda f: f.write(b"new contents"))
    _assert_one_line(err.value, target, FULL)
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))


def _writers(tmp_path):
    """(file, write it) for every file of a run folder and report that tubelet writes itself."""
    from tubelet.config.loader import dump_recipe, from_dict
    from tubelet.models.convert import convert_checkpoint
    from tubelet.data.datasets.base import FailureTracker
    from tubelet.engine.run_dir import write_labels, write_metrics
    from tubelet.report.html import write_report

    tracker = FailureTracker(10, 0.5)
    tracker.failures[3] = (3, "videos/x.mp4", "no video stream")
    recipe = from_dict({"run_dir": str(tmp_path)})
    return {
        "config.yaml": lambda p: dump_recipe(recipe, p),
        "labels.txt": lambda p: write_labels(p, ["a", "b"]),
        "metrics.json": lambda p: write_metrics(p, {"top1": 0.5}),
        "bad_files.txt": lambda p: tracker.write(p),
        "backbone.safetensors": lambda p: save_safetensors({"w": torch.zeros(3)}, p),
        "report/index.html": lambda p: write_report(p.parent, {}, title="t"),
        "report/results.md": lambda p: write_report(p.parent, {}, results=[{"model": "m", "top1": 0.5}]),
        "converted.safetensors": lambda p: convert_checkpoint(TV_SMALL, p, "torchvision", model="mvitv2_s",
                                                              overrides=json.loads(TV_META.read_text())["tubelet_overrides"]),
    }


@pytest.mark.parametrize("name", list(_writers(Path("."))))
def test_run_folder_files_on_a_full_disk(tmp_path, monkeypatch, name):
    write = _writers(tmp_path)[name]
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"previous contents\n")
    full_disk(monkeypatch, tmp_path)
    with pytest.raises(WriteError) as err:
        write(path)
    _assert_one_line(err.value, path, FULL)
    monkeypatch.undo()
    assert path.read_bytes() == b"previous contents\n"  # replaced only by a complete file


def test_read_only_folder_for_a_report(tmp_path, monkeypatch):
    from tubelet.report.plots import save_figure

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full_disk(monkeypatch, tmp_path, code=errno.EROFS, at_open=True)
    with pytest.raises(WriteError) as err:
        save_figure(plt.figure(), tmp_path / "curves.png")
    _assert_one_line(err.value, tmp_path / "curves.png", "the file system is read-only; write to a writable folder")


TINY = {
    "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 16, "num_classes": 4,
              "overrides": {"patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2}},
    "data": {"kind": "synthetic", "num_frames": 4, "crop_size": 16, "batch_size": 4,
             "synthetic": {"num_videos": 16, "num_classes": 4, "size": 16, "frames": 8}},
    "method": {"name": "supervised"},
    "optim": {"lr": 1.0e-3, "warmup_steps": 1},
    "trainer": {"max_steps": 6, "checkpoint_every_n_steps": 2, "keep_last_k": 3, "num_threads": 1,
                "enable_progress_bar": False, "log_every_n_steps": 1, "accelerator": "cpu"},
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A finished 6-step run, whose folder the tests copy for the second start (from its step-4
    checkpoint, as after a kill between the last two saves: a resume may not change max_steps)."""
    from tubelet.cli.main import main

    tmp = tmp_path_factory.mktemp("first")
    cfg = tmp / "r.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["fit", "--config", str(cfg), f"run_dir={tmp / 'run'}"]) == 0
    return cfg, tmp / "run"


# the copied run folder's checkpoints moved: Lightning notes that it cannot reload its top-k bookkeeping
moved = pytest.mark.filterwarnings("ignore:The dirpath has changed")


def _second_start(tmp_path, first_run, monkeypatch, capsys, disk):
    import shutil

    from tubelet.cli.main import main

    cfg, run0 = first_run
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    from tubelet.core.ckpt_format import remove_checkpoint

    remove_checkpoint(run / "checkpoints" / "step=000006.ckpt")  # the resume continues from step 4
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert b"train/loss" in before[run / "logs" / "csv" / "metrics.csv"]
    full_disk(monkeypatch, **disk(run))
    rc = main(["fit", "--config", str(cfg), f"run_dir={run}", "--resume", "auto"])
    monkeypatch.undo()
    return rc, error_lines(capsys.readouterr().err), run, before


@moved
def test_second_start_on_a_full_disk_keeps_every_file(tmp_path, first_run, monkeypatch, capsys):
    rc, lines, run, before = _second_start(tmp_path, first_run, monkeypatch, capsys,
                                           disk=lambda run: {"folder": run})
    assert rc == 1 and lines == [f"tubelet fit: error: {run / 'config.yaml'}: cannot write: {FULL}"], lines
    assert {p: p.read_bytes() for p in before} == before


@moved
def test_second_start_keeps_the_csv_log_when_it_cannot_be_written(tmp_path, first_run, monkeypatch, capsys):
    """Lightning's CSV logger deletes metrics.csv when it starts and rewrites it in place: a start on a
    disk that fills there must leave the previous log whole."""
    rc, lines, run, before = _second_start(tmp_path, first_run, monkeypatch, capsys,
                                           disk=lambda run: {"folder": run / "logs" / "csv"})
    csv_log = run / "logs" / "csv" / "metrics.csv"
    assert rc == 1 and lines == [f"tubelet fit: error: {csv_log}: cannot write: {FULL}"], lines
    assert csv_log.read_bytes() == before[csv_log]


@moved
def test_second_start_on_a_full_disk_when_checkpointing(tmp_path, first_run, monkeypatch, capsys):
    rc, lines, run, before = _second_start(
        tmp_path, first_run, monkeypatch, capsys,
        disk=lambda run: {"folder": run / "checkpoints", "only": lambda p: p.name.startswith(".step=000006.ckpt")})
    ckpt = run / "checkpoints" / "step=000006.ckpt"
    assert rc == 1 and lines == [f"tubelet fit: error: {ckpt}: cannot write: {FULL}"], lines
    assert find_latest_checkpoint(run / "checkpoints").name == "step=000004.ckpt"
    # the log holds the first run's rows and the new ones up to the failure, each step once
    import csv

    rows = list(csv.DictReader(open(run / "logs" / "csv" / "metrics.csv")))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(set(steps)) and steps[:4] == [0, 1, 2, 3] and 4 in steps


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o555 folder anyway")
def test_read_only_run_folder(tmp_path, first_run, capsys):
    import shutil

    from tubelet.cli.main import main

    cfg, run0 = first_run
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    run.chmod(0o555)
    try:
        rc = main(["fit", "--config", str(cfg), f"run_dir={run}", "--resume", "auto"])
    finally:
        run.chmod(0o755)
    lines = error_lines(capsys.readouterr().err)
    assert rc == 1 and len(lines) == 1 and f"{run / 'config.yaml'}: cannot write: permission denied" in lines[0]


def test_cli_turns_a_library_write_error_into_one_line(monkeypatch, capsys):
    """A write made by a library (TensorBoard's event files, Lightning's folders) that finds the disk full."""
    import tubelet.cli.models as models_cli
    from tubelet.cli.main import main

    def run(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/logs/tensorboard/events.out")

    monkeypatch.setattr(models_cli, "run", run)
    assert main(["models"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == f"tubelet models: error: /runs/x/logs/tensorboard/events.out: cannot write: {FULL}"
