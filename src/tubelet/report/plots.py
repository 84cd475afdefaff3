"""Plots of a run: loss/accuracy curves from the CSV logs, confusion matrices, sample clips, and the
markdown results table. matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tubelet.core.io import writing

LOSS_KEYS = ("loss",)
ACC_KEYS = ("acc", "top1", "top5")


@dataclass
class SampleClip:
    """One clip to show: uint8 frames ``(T, H, W, 3)`` and its true and predicted class names."""

    frames: np.ndarray
    true: str
    pred: str
    caption: str = ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG (creating the folder) and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def read_metrics(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{metric: (steps, values)}`` from every CSV under ``run_dir/logs`` (later files win on equal steps)."""
    series: dict[str, dict[float, float]] = {}
    logs = Path(run_dir) / "logs"
    files = sorted(logs.rglob("*.csv"), key=lambda p: (p.stat().st_mtime, str(p))) if logs.is_dir() else []
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                step = _float(row.get("step"))
                if step is None:
                    continue
                for key, text in row.items():
                    if key in ("step", "epoch") or key is None:
                        continue
                    value = _float(text)
                    if value is not None:
                        series.setdefault(key, {})[step] = value
    out = {}
    for key, points in series.items():
        steps = np.array(sorted(points))
        out[key] = (steps, np.array([points[s] for s in steps]))
    return out


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(values) < 2 * n:
        return values
    kernel = np.ones(n) / n
    padded = np.concatenate([np.full(n - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_curves(runs: dict[str, str | Path], out_dir: str | Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png`` comparing the runs; a figure is skipped when no run logged its metrics."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {name: read_metrics(run) for name, run in runs.items()}
    written = []
    for fname, keys, ylabel in (("loss.png", LOSS_KEYS, "loss"), ("accuracy.png", ACC_KEYS, "accuracy")):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        drawn = 0
        for name, series in metrics.items():
            for key in sorted(series):
                leaf = key.rsplit("/", 1)[-1]
                if not any(leaf == k or leaf.endswith("_" + k) for k in keys):
                    continue
                steps, values = series[key]
                smooth = max(1, len(values) // 25) if key.startswith("train") else 1
                style = "-" if key.startswith("train") else "o-"
                ax.plot(steps, _smooth(values, smooth), style, ms=3, label=f"{name}: {key}")
                drawn += 1
        if drawn:
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out_dir / fname, dpi=100)
            written.append(out_dir / fname)
        plt.close(fig)
    return written


def plot_confusion(
    confusion: Any, class_names: Sequence[str] | None, path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with the counts printed.

    ``class_names=None`` labels classes by index; beyond 30 classes ticks and counts are left out.
    """
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    if class_names is None:
        class_names = [str(i) for i in range(cm.shape[0])]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(class_names)
    side = min(14.0, 1.0 + 0.55 * k)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
        for i, j in zip(*np.nonzero(cm)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_samples(samples: Sequence[SampleClip], path: str | Path, max_frames: int = 8, title: str = "") -> Path:
    """A grid: one row per clip (up to ``max_frames`` evenly spaced frames), titled true / predicted class."""
    plt = _pyplot()
    n = max(1, len(samples))
    cols = max(min(max_frames, s.frames.shape[0]) for s in samples) if samples else 1
    fig, axes = plt.subplots(n, cols, figsize=(1.1 * cols, 1.35 * n), squeeze=False)
    for r, s in enumerate(samples):
        idx = np.linspace(0, s.frames.shape[0] - 1, min(cols, s.frames.shape[0])).round().astype(int)
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(idx):
                ax.imshow(s.frames[idx[c]], interpolation="nearest")
        ok = s.true == s.pred
        axes[r, 0].set_title(f"true: {s.true}   pred: {s.pred}", loc="left", fontsize=7,
                             color="darkgreen" if ok else "crimson")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of result rows (floats in [0, 1] printed as percentages are left to the caller)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def save_test_figures(results: dict[str, Any]) -> Path:
    """Draw the confusion matrix of an ``evaluate`` result into its ``report_dir`` as ``confusion.png``;
    the path is also stored as ``results["confusion_png"]``."""
    png = plot_confusion(np.asarray(results["confusion"]), results.get("class_names") or None,
                         Path(results["report_dir"]) / "confusion.png", title=results.get("title", ""))
    results["confusion_png"] = str(png)
    return png
