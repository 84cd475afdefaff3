"""The run folder's logs and results: the CSV log kept whole across resumes, and the final metrics.

Layout (``recipe.run_dir``)::

    config.yaml            effective config (after _base_ and overrides), written at the start
    labels.txt             the training set's class names, one per line (index = line), when it has them
    checkpoints/           the last ``trainer.keep_last_k`` training states (step=NNNNNN.ckpt + weights)
    logs/csv/metrics.csv   CSV log;  logs/tensorboard/  TensorBoard events
    method.safetensors     the whole method's weights at the end (with the backbone's name and config)
    backbone.safetensors   ``method.backbone``, self-describing (loads with ``tubelet.load_model(file)``)
    metrics.json           final metrics
    bad_files.txt          the unreadable samples, when there were any
    report/                the run report and the figures of ``tubelet test`` and of the methods

The folder holds one run: every checkpoint records the recipe of its run (``engine/resume.py``), and a
new run into a folder that holds checkpoints is refused unless it is told to overwrite them
(:func:`clear_run`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from tubelet.core.io import atomic_write_text, writing


# What a run writes into its folder; :func:`clear_run` removes exactly these, never anything else a
# user keeps there (the folder may be one they share with other files).
RUN_FILES = ("config.yaml", "labels.txt", "method.safetensors", "backbone.safetensors", "metrics.json",
             "bad_files.txt")
RUN_FOLDERS = ("checkpoints", "logs/csv", "logs/tensorboard", "report")


def holds_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``.ckpt`` files (complete or not, temporary files aside) in ``run_dir/checkpoints``."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(".")) if folder.is_dir() else []


def clear_run(run_dir: str | Path, checkpoints: bool = True) -> list[Path]:
    """Remove what an earlier run wrote into ``run_dir`` (its checkpoints unless ``checkpoints`` is
    False, logs, results and report), so that the next run starts in a folder holding nothing of another run."""
    run_dir = Path(run_dir)
    removed = []
    for name in RUN_FOLDERS:
        if name == "checkpoints" and not checkpoints:
            continue
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
            removed.append(run_dir / name)
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(run_dir / name)
    logs = run_dir / "logs"
    if logs.is_dir() and not any(logs.iterdir()):
        logs.rmdir()
    return removed


def read_metrics(path: Path) -> dict[str, float]:
    """``metrics.json`` as written by :func:`write_metrics`; empty when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} \
        if isinstance(data, dict) else {}


def read_csv_log(path: Path, before_step: int) -> list[dict[str, str]]:
    """Rows of an earlier CSV log up to the resumed step (rows past it were logged after the
    checkpoint by the interrupted run, and are logged again). A row cut short by a failed append (a
    full disk) is left out."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if None not in r.values() and None not in r]
    return [r for r in rows if not r.get("step") or int(float(r["step"])) < before_step]


def _csv_text(keys: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is never deleted or rewritten in
    place: Lightning deletes it when the writer starts and rewrites it in place when the columns change,
    so a run that fails then (a full disk) would lose the log of the runs before it. Here the file is
    replaced, with the rows to keep in front, only once the new one is complete (``atomic_write``); later
    rows are appended."""

    def __init__(self, log_dir: str, keep: list[dict[str, str]]) -> None:
        self._keep = keep
        self._own = False  # whether metrics.csv is this run's file yet
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning deletes metrics.csv here

    def log_hparams(self, params: dict[str, Any]) -> None:
        with writing(Path(self.log_dir) / self.NAME_HPARAMS_FILE):
            super().log_hparams(params)

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        path = Path(self.metrics_file_path)
        with writing(path):
            if self._own and not new_keys:
                with open(path, "a", newline="", encoding="utf-8") as f:
                    csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
            else:
                if self._own:
                    with open(path, newline="", encoding="utf-8") as f:
                        before: list[dict[str, Any]] = list(csv.DictReader(f))
                else:
                    before = self._keep
                self.metrics_keys = sorted(set(self.metrics_keys).union(*before))
                atomic_write_text(path, _csv_text(self.metrics_keys, before + self.metrics))
                self._own, self._keep = True, []
        self.metrics = []


class RunCSVLogger(CSVLogger):
    """``run_dir/logs/csv/metrics.csv``, kept whole across resumes: the rows given to ``keep_rows`` (those
    of the runs before the resumed step) stay in front of the new ones, and the file on disk is never
    deleted or truncated, also when writing fails."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(run_dir, name="logs", version="csv")
        self._keep: list[dict[str, str]] = []

    def keep_rows(self, rows: list[dict[str, str]]) -> None:
        """Rows to put in front of this run's; call before training starts."""
        self._keep = list(rows)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            with writing(self.log_dir):
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _KeepingWriter(self.log_dir, self._keep)
        return self._experiment


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def write_labels(path: Path, names: list[str]) -> Path:
    """``labels.txt``: class ``i`` is line ``i``, read back by ``tubelet.data.datasets.load_label_map``, so that
    a run's predictions can be named from the folder alone."""
    bad = [n for n in names if not str(n).strip() or "\n" in str(n)]
    if bad:
        raise ValueError(f"class names must be non-empty single lines for {path}, got {bad}")
    return atomic_write_text(path, "".join(f"{n}\n" for n in names))


def write_metrics(path: Path, metrics: Mapping[str, float]) -> Path:
    return atomic_write_text(path, json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n")
