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
import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch


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
    checkpoint by the interrupted run, and are logged again)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if not r.get("step") or int(float(r["step"])) < before_step]


def merge_csv_log(path: Path, old: list[dict[str, str]]) -> None:
    # Lightning's CSVLogger starts a fresh file; put the rows of the runs before the resume back in front.
    if not old:
        return
    new: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            new = list(csv.DictReader(f))
    keys: list[str] = []
    for row in old + new:
        keys.extend(k for k in row if k not in keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(keys))
        writer.writeheader()
        writer.writerows(old + new)


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
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    return path


def write_metrics(path: Path, metrics: Mapping[str, float]) -> Path:
    path.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
