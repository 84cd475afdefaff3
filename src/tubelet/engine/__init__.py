"""The training engine: Lightning wraps any method; checkpoints, optimizers, schedules, callbacks.

``fit(recipe, resume=None, method=None, datasets=None, callbacks=()) -> FitResult`` trains;
``evaluate(recipe, checkpoint, ...) -> dict`` runs multi-view testing (the protocol is in ``tubelet.eval``).
"""

from tubelet.engine.evaluate import evaluate
from tubelet.engine.fit import FitResult, fit

__all__ = ["FitResult", "evaluate", "fit"]
