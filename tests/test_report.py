import json

import numpy as np
import pytest

from tubelet.report import SampleClip, format_table, plot_confusion, read_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_lightning_csv(run_dir, n=30, offset=0.0):
    # Lightning CSVLogger layout: one row per logged step, empty cells where a metric was not logged.
    logs = run_dir / "logs" / "csv" / "version_0"
    logs.mkdir(parents=True)
    lines = ["epoch,lr,step,train/acc,train/loss,val/top1,val/top5"]
    for s in range(n):
        lines.append(f"0,0.001,{s},{0.1 + s / n:.4f},{2.0 - s / n + offset:.4f},,")
        if s % 10 == 9:
            lines.append(f"0,,{s},,,{0.2 + s / n:.4f},0.9")
    (logs / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_read_metrics_merges_sparse_rows(tmp_path):
    _write_lightning_csv(tmp_path)
    m = read_metrics(tmp_path)
    steps, loss = m["train/loss"]
    assert len(steps) == 30 and loss[0] == pytest.approx(2.0) and loss[-1] == pytest.approx(2.0 - 29 / 30, abs=1e-4)
    steps, top1 = m["val/top1"]
    assert steps.tolist() == [9, 19, 29] and top1[0] == pytest.approx(0.5)
    assert "epoch" not in m and "lr" in m


def test_write_report_two_runs(tmp_path):
    a, b = tmp_path / "video", tmp_path / "still"
    _write_lightning_csv(a)
    _write_lightning_csv(b, offset=0.5)
    rng = np.random.default_rng(0)
    clips = [SampleClip(rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8), "move_left", p) for p in
             ("move_left", "move_right")]
    cm = np.array([[5, 1], [2, 4]])
    results = [{"model": "video", "top1": 0.9, "top5": 1.0}, {"model": "still", "top1": 0.5, "top5": 1.0}]
    index = write_report(
        tmp_path / "report", {"video": a, "still": b}, results, ["move_left", "move_right"],
        confusions={"video": cm, "still": None}, samples={"video": clips, "still": clips},
    )
    out = tmp_path / "report"
    page = index.read_text()
    for name in ("loss.png", "accuracy.png", "samples_video.png", "samples_still.png", "confusion_video.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f'src="{name}"' in page
    assert not (out / "confusion_still.png").exists()
    assert "<td>0.900</td>" in page
    assert json.loads((out / "results.json").read_text())[1]["top1"] == 0.5
    assert "| video | 0.900 | 1.000 |" in (out / "results.md").read_text()


def test_report_without_logs_still_writes_index(tmp_path):
    index = write_report(tmp_path / "r", {"x": tmp_path / "missing"}, [{"model": "x", "top1": 0.1}])
    assert index.is_file() and not (tmp_path / "r" / "loss.png").exists()


def test_confusion_png(tmp_path):
    p = plot_confusion(np.eye(3) * 4, ["a", "b", "c"], tmp_path / "cm.png")
    assert p.read_bytes()[:8] == PNG_MAGIC


def test_format_table():
    assert format_table([{"a": 1, "b": 0.5}]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.500 |"]
