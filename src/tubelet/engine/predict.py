"""``predict(paths, run_dir=...)``: the top-k classes of video files, seen as ``tubelet test`` sees a test video.

Each file is decoded and transformed by the recipe's test pipeline (``ClipDataset`` with
``build_transforms(cfg, "test")``: ``data.test_clips`` x ``data.test_crops`` views) and scored by
``evaluate``'s own view averaging (``dataset_view_scores``, i.e. ``tubelet.eval.multiview``), so that a
file's prediction is the one ``tubelet test`` would make for it. A file that cannot be read gets its
``VideoError`` reason instead of a prediction, and the other files go on.

A predictor comes from a run folder (``config.yaml``, ``method.safetensors`` and, when the training
set named its classes, ``labels.txt``; see ``engine/run_dir.py``) or from a weights file and a recipe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from tubelet.config.schema import Recipe
from tubelet.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Prediction:
    """One file's result: ``topk`` as ``(class index, class name or None, score)`` from the highest mean
    softmax score down, over ``num_views`` views; or ``error`` (why the file could not be read)."""

    path: str
    topk: list[tuple[int, str | None, float]] = field(default_factory=list)
    num_views: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict:
        """The JSON form: ``path``, ``topk`` [{label, name, score}], ``num_views`` (and ``error``)."""
        out: dict = {"path": self.path, "topk": [{"label": i, "name": n, "score": s} for i, n, s in self.topk],
                     "num_views": self.num_views}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class ClipPrediction:
    """One clip of a streamed video: clip ``clip`` of ``num_clips``, its window ``[start, end)`` in seconds and
    ``topk`` as in :class:`Prediction` (softmax of that clip alone, the model's memory of earlier clips
    included)."""

    path: str
    clip: int
    num_clips: int
    start: float
    end: float
    topk: list[tuple[int, str | None, float]]

    def as_dict(self) -> dict:
        return {"path": self.path, "clip": self.clip, "num_clips": self.num_clips, "start": self.start,
                "end": self.end, "topk": [{"label": i, "name": n, "score": s} for i, n, s in self.topk]}


def stream_windows(duration: Fraction, clip_seconds: Fraction) -> list[tuple[Fraction, Fraction]]:
    """Consecutive ``[start, end)`` windows of ``clip_seconds`` over ``[0, duration)``; the last one may be
    shorter (its frames are padded by repeating its last frame, as every short clip is)."""
    if duration <= 0:
        return []
    n = math.ceil(duration / clip_seconds)
    return [(i * clip_seconds, min((i + 1) * clip_seconds, duration)) for i in range(n)]


@dataclass
class Predictor:
    """A classifying method with the recipe whose test pipeline feeds it, on ``device``.
    ``class_names`` is None when the run's label map is unknown (predictions then name class indices)."""

    recipe: Recipe
    method: nn.Module
    device: torch.device
    class_names: list[str] | None = None
    weights: str = ""
    labels_source: str = ""  # where the class names came from

    @property
    def num_classes(self) -> int:
        return int(self.recipe.model.num_classes)

    @torch.inference_mode()
    def predict(self, paths: Sequence[str | Path], topk: int = 5, batch_size: int | None = None) -> list[Prediction]:
        """One ``Prediction`` per path, in order; ``topk`` is capped at the number of classes."""
        from functools import partial

        from tubelet.data.datasets import ClipDataset, FrameFolderReader, ImageDataset, Sample
        from tubelet.data.transforms import build_transforms
        from tubelet.engine.evaluate import dataset_view_scores

        if int(topk) < 1:
            raise ConfigError(f"--topk must be at least 1, got {topk}")
        k = min(int(topk), self.num_classes)
        if not paths:
            return []
        # every file is tried: no failure budget (a file that fails is reported, not fatal)
        cfg = dataclasses.replace(self.recipe.data, max_failure_fraction=1.0)
        samples = [Sample(path=str(p), label=-1, source=str(p)) for p in paths]
        kw = dict(transform=build_transforms(cfg, "test"), seed=0, num_classes=self.num_classes,
                  class_names=self.class_names)
        # the files are read as the recipe's test split reads its own (build_clip_dataset)
        if cfg.kind == "images":
            dataset: ClipDataset = ImageDataset(samples, cfg, "test", **kw)
        elif cfg.kind == "frames":
            dataset = ClipDataset(samples, cfg, "test", opener=partial(FrameFolderReader, fps=cfg.frames_fps), **kw)
        else:
            dataset = ClipDataset(samples, cfg, "test", **kw)
        out = dataset_view_scores(self.recipe, self.method, dataset, self.device, batch_size)
        errors = {int(i): reason for i, _, reason in out["bad"]}
        results: dict[int, Prediction] = {}
        if out["scores"] is not None:
            values, indices = out["scores"].topk(k, dim=1)
            for row, i in enumerate(out["indices"].tolist()):
                top = [(int(c), self.class_names[int(c)] if self.class_names else None, float(s))
                       for s, c in zip(values[row].tolist(), indices[row].tolist())]
                results[int(i)] = Prediction(str(paths[int(i)]), top, int(out["num_views"]))
        return [results.get(i) or Prediction(str(p), error=errors.get(i, "no result"))
                for i, p in enumerate(paths)]


    def _file_dataset(self, cfg, samples: list):
        from functools import partial

        from tubelet.data.datasets import ClipDataset, FrameFolderReader
        from tubelet.data.transforms import build_transforms

        kw = dict(transform=build_transforms(cfg, "test"), seed=0, num_classes=self.num_classes,
                  class_names=self.class_names)
        if cfg.kind == "frames":
            return ClipDataset(samples, cfg, "test", opener=partial(FrameFolderReader, fps=cfg.frames_fps), **kw)
        return ClipDataset(samples, cfg, "test", **kw)

    @torch.inference_mode()
    def stream(self, path: str | Path, topk: int = 5, on_start: Callable[[int], None] | None = None,
               on_video: Callable[[Fraction, Fraction], None] | None = None) -> Iterator[ClipPrediction]:
        """The clips of one video in time order, each classified with the model's memory of the earlier
        ones (MeMViT; a model without memory classifies each clip alone). Windows are
        ``data.num_frames x data.sampling_rate`` frames at the 30 fps reference, read one at a time through
        the recipe's test pipeline (one centre view); memory use does not grow with the video's length.
        ``on_start(num_clips)`` is called once the number of windows is known (a progress bar), and
        ``on_video(duration, fps)`` with the file's duration in seconds and its frame rate.
        A file that cannot be read is a ``VideoError``."""
        from tubelet.data.datasets import Sample
        from tubelet.data.mixing import BadSample
        from tubelet.errors import VideoError

        if int(topk) < 1:
            raise ConfigError(f"--topk must be at least 1, got {topk}")
        if self.recipe.data.kind == "images":
            raise ConfigError("--stream reads videos; data.kind 'images' has no time axis")
        k = min(int(topk), self.num_classes)
        path = str(path)
        cfg = dataclasses.replace(self.recipe.data, test_clips=1, test_crops=1, max_failure_fraction=1.0)
        probe = self._file_dataset(cfg, [])
        with probe.opener(path) as reader:
            duration, fps = reader.duration, reader.fps
        if on_video is not None:
            on_video(duration, fps)
        windows = stream_windows(duration, Fraction(cfg.num_frames * cfg.sampling_rate, 30))
        if fps and fps > 0:
            # a container's duration can end after its last frame (8.008 s for 240 frames at 29.97): a last
            # window that starts after the last frame would hold none
            windows = [w for w in windows if w[0] <= duration - 1 / Fraction(fps)] or windows[:1]
        if on_start is not None:
            on_start(len(windows))
        backbone = getattr(self.method, "backbone", self.method)
        memory = bool(getattr(backbone, "uses_memory", False))
        clear = getattr(backbone, "clear_memory", None)
        ids = torch.zeros(1, dtype=torch.int64, device=self.device)  # one stream: one video id
        if clear is not None:
            clear()
        try:
            for i, (start, end) in enumerate(windows):
                # one window decoded at a time: a dataset of that window alone
                item = self._file_dataset(cfg, [Sample(path=path, label=-1, start=start, end=end, source=path)])[0]
                if isinstance(item, BadSample):
                    raise VideoError(path, f"clip {i} [{float(start):.3f}, {float(end):.3f}) s: {item.reason}")
                clip = item["video"][:1].to(self.device)  # (1, C, T, H, W): the single test view
                logits = self.method.classify(clip, ids) if memory else self.method.classify(clip)
                values, indices = logits.float().softmax(dim=-1)[0].topk(k)
                top = [(int(c), self.class_names[int(c)] if self.class_names else None, float(v))
                       for v, c in zip(values.tolist(), indices.tolist())]
                yield ClipPrediction(path, i, len(windows), float(start), float(end), top)
        finally:
            if clear is not None:
                clear()


# what a prediction may change: how files are read and viewed, and where the model runs
OVERRIDABLE = ("data", "trainer")
# methods whose classify() is their backbone's forward, so that an exported backbone classifies as they do
BACKBONE_CLASSIFIERS = ("supervised", "castling")


class RuntimeClassifier(nn.Module):
    """A classifying method whose ``classify`` is an exported program (``tubelet.export.load_runtime``):
    clips go to the runtime on the CPU and the logits come back on the clips' device."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.runner = runner

    def classify(self, video: torch.Tensor, video_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.runner(video.float().cpu()).to(video.device)


def _runtime_method(recipe: Recipe, exported: str | Path, runtime: str, threads: int | None) -> RuntimeClassifier:
    """The exported program for ``recipe``'s model, refused (one line) when it is another model or the
    recipe's method does not classify with the backbone alone."""
    from tubelet.export import load_runtime

    if recipe.method.name not in BACKBONE_CLASSIFIERS:
        raise ConfigError(f"--runtime {runtime}: method '{recipe.method.name}' does not classify with its backbone "
                          f"alone; exported backbones stand in for {', '.join(BACKBONE_CLASSIFIERS)} only")
    runner = load_runtime(exported, runtime, threads=threads)
    meta = runner.meta or {}
    if meta.get("model") and meta["model"] != recipe.model.name:
        raise ConfigError(f"{exported}: exported from model '{meta['model']}' but the recipe's model is "
                          f"'{recipe.model.name}'")
    if meta.get("num_classes") is not None and int(meta["num_classes"]) != int(recipe.model.num_classes):
        raise ConfigError(f"{exported}: exported with {meta['num_classes']} classes but model.num_classes is "
                          f"{recipe.model.num_classes}")
    return RuntimeClassifier(runner)


def load_predictor(run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
                   recipe: Recipe | None = None, overrides: Sequence[str] = (), runtime: str = "eager",
                   exported: str | Path | None = None, threads: int | None = None) -> Predictor:
    """A predictor from a run folder (``run_dir``: its ``config.yaml``, ``method.safetensors`` and
    ``labels.txt``), or from ``checkpoint`` (a training checkpoint, ``method.safetensors`` or
    ``backbone.safetensors``) with the ``recipe`` it was trained with (class names then come from the
    recipe's ``data.label_map`` or synthetic set). The method runs on ``trainer.accelerator``'s device.
    ``overrides`` (``data.test_clips=3``, ``trainer.accelerator=cpu``) apply to the run folder's recipe;
    with ``checkpoint`` they are expected in ``recipe`` already and only checked here.

    ``runtime`` other than ``eager`` (``torch-export``, ``onnxruntime``, ``aoti``, ``executorch``) classifies with the
    ``exported`` program of ``tubelet export`` instead of the weights; the run folder or ``recipe`` then
    gives the test pipeline and class names only (``checkpoint`` is not read), and ``threads`` sets the
    runtime's intra-op threads."""
    from tubelet.export import RUNTIMES

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime '{runtime}': expected one of {', '.join(RUNTIMES)}")
    if runtime == "eager" and exported is not None:
        raise ConfigError("--exported runs in --runtime torch-export, onnxruntime, aoti or executorch, not eager")
    if runtime != "eager":
        if exported is None:
            raise ConfigError(f"--runtime {runtime} needs --exported FILE (made by tubelet export)")
        if checkpoint is not None:
            raise ConfigError(f"--runtime {runtime} classifies with --exported {exported}; do not give --checkpoint")
        return _exported_predictor(run_dir, recipe, overrides, runtime, exported, threads)
    from tubelet.config import load_recipe
    from tubelet.engine.device import resolve_device, with_resolved_precision
    from tubelet.engine.evaluate import load_method_weights
    from tubelet.methods import build_method

    if (run_dir is None) == (checkpoint is None):
        raise ConfigError("give either a run folder (--run) or a checkpoint with its recipe (--checkpoint, --config)")
    outside = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] not in OVERRIDABLE]
    if outside:
        raise ConfigError(f"override '{outside[0]}': prediction takes data.* and trainer.* overrides only (the "
                          "model and method come from the weights)")
    names: list[str] | None = None
    source = ""
    if run_dir is not None:
        run = Path(run_dir)
        if not (run / "config.yaml").is_file():
            raise CheckpointError(f"{run}: not a run folder (no config.yaml)")
        weights = run / "method.safetensors"
        if not weights.is_file():
            raise CheckpointError(
                f"{run}: no method.safetensors (the run has not finished); use --checkpoint "
                f"{run / 'checkpoints' / 'step=N.ckpt'} --config {run / 'config.yaml'}"
            )
        recipe = load_recipe(run / "config.yaml", list(overrides))
        if (run / "labels.txt").is_file():
            names, source = _read_labels(run / "labels.txt"), str(run / "labels.txt")
    else:
        if recipe is None:
            raise ConfigError("a checkpoint needs the recipe it was trained with (--config RECIPE)")
        weights = Path(checkpoint)  # type: ignore[arg-type]
        if not weights.exists():
            raise CheckpointError(f"{weights}: checkpoint not found")
        names, source = _recipe_class_names(recipe)
    if names is not None and len(names) != recipe.model.num_classes:
        raise ConfigError(f"{source} names {len(names)} classes but model.num_classes is {recipe.model.num_classes}")
    recipe = with_resolved_precision(recipe)  # trainer.precision=auto: what fit would pick here
    device = resolve_device(recipe.trainer.accelerator)
    # the run's weights replace whatever model.checkpoint the recipe started from (it need not exist here)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, checkpoint=None))
    method = build_method(recipe)
    if not hasattr(method, "classify"):
        raise ConfigError(f"method '{recipe.method.name}' has no classify(); prediction needs a classifier")
    load_method_weights(method, weights)
    return Predictor(recipe, method.eval().to(device), device, names, str(weights), source)


def _exported_predictor(run_dir, recipe, overrides, runtime, exported, threads) -> Predictor:
    from tubelet.config import load_recipe

    if (run_dir is None) == (recipe is None):
        raise ConfigError("give either a run folder (--run) or the recipe (--config) for the test pipeline")
    outside = [o for o in overrides if o.split("=", 1)[0].split(".", 1)[0] not in OVERRIDABLE]
    if outside:
        raise ConfigError(f"override '{outside[0]}': prediction takes data.* and trainer.* overrides only")
    names, source = None, ""
    if run_dir is not None:
        run = Path(run_dir)
        if not (run / "config.yaml").is_file():
            raise CheckpointError(f"{run}: not a run folder (no config.yaml)")
        recipe = load_recipe(run / "config.yaml", list(overrides))
        if (run / "labels.txt").is_file():
            names, source = _read_labels(run / "labels.txt"), str(run / "labels.txt")
    else:
        names, source = _recipe_class_names(recipe)
    if names is not None and len(names) != recipe.model.num_classes:
        raise ConfigError(f"{source} names {len(names)} classes but model.num_classes is {recipe.model.num_classes}")
    method = _runtime_method(recipe, exported, runtime, threads)
    return Predictor(recipe, method.eval(), torch.device("cpu"), names, str(exported), source)


def predict(paths: Sequence[str | Path], run_dir: str | Path | None = None, checkpoint: str | Path | None = None,
            recipe: Recipe | None = None, topk: int = 5) -> list[Prediction]:
    """``load_predictor(run_dir, checkpoint, recipe).predict(paths, topk)``."""
    return load_predictor(run_dir, checkpoint, recipe).predict(paths, topk)


def _read_labels(path: Path) -> list[str]:
    from tubelet.data.datasets import load_label_map

    return list(load_label_map(path).names)


def _recipe_class_names(recipe: Recipe) -> tuple[list[str] | None, str]:
    """The class names a recipe itself gives: its ``data.label_map`` file, or the synthetic set's motions."""
    data = recipe.data
    if data.label_map:
        return _read_labels(Path(data.label_map)), str(data.label_map)
    if data.kind == "synthetic":
        from tubelet.data.synthetic import class_names

        return class_names(data.synthetic), "data.synthetic"
    return None, ""
