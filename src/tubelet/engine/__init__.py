"""The training engine: Lightning wraps any method; checkpoints, optimizers, schedules, callbacks.

``fit(recipe, resume=None, method=None, datasets=None, callbacks=()) -> FitResult`` trains;
``evaluate(recipe, checkpoint, ...) -> dict`` runs multi-view testing (the protocol is in ``tubelet.eval``);
``load_model(run_dir_or_file)`` rebuilds a trained backbone from what its files say.
"""

from tubelet.engine.evaluate import evaluate
from tubelet.engine.fit import FitResult, fit
from tubelet.engine.load import load_model

__all__ = ["FitResult", "evaluate", "fit", "load_model"]
