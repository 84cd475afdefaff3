"""The training engine: Lightning wraps any method; checkpoints, optimizers, schedules, callbacks.

``fit(recipe, resume=None, method=None, datasets=None, callbacks=(), overwrite=False) -> FitResult`` trains;
``evaluate(recipe, checkpoint, ...) -> dict`` runs multi-view testing (the protocol is in ``tubelet.eval``);
``load_model(run_dir_or_file)`` rebuilds a trained backbone from what its files say;
``predict(paths, run_dir=...)`` gives each video file's top-k classes through the test pipeline.
"""

from tubelet.engine.evaluate import evaluate
from tubelet.engine.fit import FitResult, fit
from tubelet.engine.load import load_model
from tubelet.engine.predict import Prediction, Predictor, load_predictor, predict

__all__ = ["FitResult", "Prediction", "Predictor", "evaluate", "fit", "load_model", "load_predictor", "predict"]
