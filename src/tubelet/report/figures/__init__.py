"""End-of-fit figures of the methods that have them, each a no-op for a method it does not fit:
MAE-ST reconstructions (any method with ``reconstruct``) and MaskFeat's HOG targets and predictions."""

from __future__ import annotations

from typing import Any

from tubelet.report.figures.base import ClipFigureCallback, clips_from
from tubelet.report.figures.mae_st import ReconstructionCallback, save_reconstructions
from tubelet.report.figures.maskfeat import HOGReportCallback, save_hog_figure

# Figure callbacks a run gets; each draws only when the trained method has what it needs.
FIGURES: tuple[type[ClipFigureCallback], ...] = (ReconstructionCallback, HOGReportCallback)


def figure_callbacks(recipe: Any) -> list[ClipFigureCallback]:
    """One callback per figure in ``FIGURES``, reading its clips from the recipe's data when it draws."""
    return [fig.for_recipe(recipe) for fig in FIGURES]


__all__ = ["FIGURES", "ClipFigureCallback", "HOGReportCallback", "ReconstructionCallback", "clips_from",
           "figure_callbacks", "save_hog_figure", "save_reconstructions"]
