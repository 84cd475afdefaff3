"""tubelet: video understanding on PyTorch."""

import os

from torch import nn

from tubelet.errors import CheckpointError, ConfigError, DataError, TubeletError, VideoError, WriteError

# The shipped methods register their config sections with the recipe loader on import.
import tubelet.methods  # noqa: E402,F401,I001
from tubelet.models.registry import create_model, list_models  # noqa: E402
from tubelet.models.weights import load_weights as load_checkpoint  # noqa: E402


def load_model(path: str | os.PathLike) -> nn.Module:
    """The trained model of a run folder or self-describing weights file (``tubelet.engine.load_model``;
    imported on first use, so that ``import tubelet`` does not load the training engine)."""
    from tubelet.engine.load import load_model as _load_model

    return _load_model(path)


__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "TubeletError", "VideoError", "WriteError",
    "create_model", "list_models", "load_checkpoint", "load_model", "__version__",
]
