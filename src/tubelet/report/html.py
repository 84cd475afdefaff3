"""The HTML run report: loss/accuracy curves, sample clips with predictions, confusion matrix, results table.

Everything is drawn with matplotlib's Agg backend (no display needed) into ``<out>/`` as PNG files tied
together by ``<out>/index.html``. Curves come from the CSV logs the engine writes under ``run_dir/logs``
(Lightning's ``metrics.csv``: one row per logged step, empty cells where a metric was not logged).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence


from tubelet.core.io import atomic_write_text, writing
from tubelet.report.plots import SampleClip, format_table, plot_confusion, plot_curves, plot_samples

def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(
    out_dir: str | Path,
    runs: dict[str, str | Path],
    results: Sequence[dict[str, Any]] = (),
    class_names: Sequence[str] | None = None,
    confusions: dict[str, Any] | None = None,
    samples: dict[str, Sequence[SampleClip]] | None = None,
    title: str = "tubelet run report",
    notes: str = "",
    appendix: dict[str, str] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` (+ PNGs, ``results.md``, ``results.json``) for one or several runs.

    ``runs`` maps a display name to a run folder (curves come from its ``logs/``); ``confusions`` and
    ``samples`` map the same names to a ``(K, K)`` matrix and clips with predictions. A run folder's own
    ``report/confusion.png``, when present and no matrix is given, is linked too. ``appendix``: title ->
    preformatted text (e.g. the effective config), shown last.
    """
    out = Path(out_dir)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    if results:
        parts.append("<h2>Results</h2>" + _html_table(results))
        atomic_write_text(out / "results.md", format_table(results) + "\n")
        atomic_write_text(out / "results.json", json.dumps(list(results), indent=2, default=str))
    curves = plot_curves(runs, out)
    if curves:
        parts.append("<h2>Training curves</h2>" + "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in curves))
    for name, run in runs.items():
        slug = _slug(name)
        section = []
        if samples and samples.get(name):
            png = plot_samples(samples[name], out / f"samples_{slug}.png", title=name)
            section.append(f'<h3>Sample clips with predictions</h3><img src="{png.name}" alt="samples">')
        if confusions and confusions.get(name) is not None and class_names:
            png = plot_confusion(confusions[name], class_names, out / f"confusion_{slug}.png", title=name)
            section.append(f'<h3>Confusion matrix</h3><img src="{png.name}" alt="confusion">')
        else:
            own = Path(run) / "report" / "confusion.png"
            if own.is_file():
                rel = Path(_relpath(own, out))
                section.append(f'<h3>Confusion matrix</h3><img src="{rel.as_posix()}" alt="confusion">')
        recon = Path(run) / "report" / "reconstructions.png"
        if recon.is_file():  # masked autoencoders (MAE-ST): original / masked / reconstructed frames
            rel = Path(_relpath(recon, out))
            section.append(f'<h3>Reconstructions</h3><img src="{rel.as_posix()}" alt="reconstructions">')
        if section:
            parts.append(f"<h2>{html.escape(name)}</h2><p>run folder: <code>{html.escape(str(run))}</code></p>")
            parts.extend(section)
    for head, text in (appendix or {}).items():
        parts.append(f"<h2>{html.escape(head)}</h2><pre>{html.escape(text)}</pre>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}img{max-width:100%;margin:4px}"
        "pre{background:#f6f6f6;padding:8px;overflow-x:auto}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


def write_run_report(run_dir: str | Path) -> Path:
    """``run_dir/report/index.html`` for one run folder of ``tubelet fit`` / ``tubelet test``: the final
    training metrics (``metrics.json``) and the test results (``report/test_results.json``) when there
    are any, the curves from its logs, the figures its methods drew into ``report/`` (confusion matrix,
    reconstructions), the unreadable files and the effective config. Rewritten after each command, so
    it shows what the folder holds now."""
    run = Path(run_dir)
    out = run / "report"
    results: list[dict[str, Any]] = []
    metrics = _read_json(run / "metrics.json")
    if metrics:
        row: dict[str, Any] = {"stage": "fit"}
        row.update({k: _round(v) for k, v in sorted(metrics.items())})
        results.append(row)
    test = _read_json(out / "test_results.json")
    if test:
        results.append({
            "stage": "test", "top1": _round(test.get("top1")), "top5": _round(test.get("top5")),
            "videos": test.get("num_videos"), "views per video": test.get("num_views"),
            "skipped (unreadable)": len(test.get("bad_samples", [])), "checkpoint": test.get("checkpoint"),
        })
    appendix = {}
    bad = run / "bad_files.txt"
    if bad.is_file():
        appendix["Unreadable training files (path, reason)"] = bad.read_text(encoding="utf-8")
    config = run / "config.yaml"
    if config.is_file():
        appendix["Effective config (config.yaml)"] = config.read_text(encoding="utf-8")
    return write_report(out, {run.name: run}, results, title=f"tubelet run report: {run}", appendix=appendix)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower() or "run"


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
