"""The training engine: Lightning wraps any method; checkpoints, optimizers, schedules, callbacks.

``fit(recipe, resume=None, method=None, datasets=None, callbacks=()) -> FitResult`` trains;
``evaluate(recipe, checkpoint, ...) -> dict`` runs multi-view testing (``tubelet.eval.multiview``).
"""

from tubelet.engine.fit import FitResult, fit

__all__ = ["FitResult", "evaluate", "fit"]


def __getattr__(name: str):
    # evaluate lives in tubelet.eval (which imports the engine): load it on first use.
    if name == "evaluate":
        from tubelet.eval.multiview import evaluate

        return evaluate
    raise AttributeError(name)
