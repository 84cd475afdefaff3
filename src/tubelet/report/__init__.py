"""Plots and the HTML run report (``plots.py``, ``html.py``) and the figures of the methods that have
them (``figures/``): plain functions over logs, arrays and clips, plus the end-of-fit callbacks that
draw them. Imported by the CLI; nothing below it imports the report."""

from tubelet.report.html import write_report, write_run_report
from tubelet.report.plots import (
    SampleClip,
    format_table,
    plot_confusion,
    plot_curves,
    plot_samples,
    read_metrics,
    save_test_figures,
)

__all__ = ["SampleClip", "format_table", "plot_confusion", "plot_curves", "plot_samples", "read_metrics",
           "save_test_figures", "write_report", "write_run_report"]
