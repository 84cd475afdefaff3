"""The base of the end-of-fit figures that a method's report shows, drawn from a few clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lightning.pytorch.callbacks import Callback

from tubelet.errors import TubeletError


def clips_from(dataset: Any, num_clips: int = 3) -> Any:
    """The first ``num_clips`` clips of a dataset as (B, C, T, H, W) (first view of repeated samples)."""
    import torch

    clips = []
    for i in range(min(num_clips, len(dataset))):
        v = dataset[i]["video"]
        clips.append(v[0] if v.ndim == 5 else v)
    return torch.stack(clips)


class ClipFigureCallback(Callback):
    """Base of the end-of-fit figures drawn from a few clips (MAE-ST reconstructions, MaskFeat HOG).

    The clips come from ``dataset`` or, with ``for_recipe``, from the recipe's val split (else train),
    built only when the figure is drawn. Subclasses implement ``on_train_end``.
    """

    def __init__(self, dataset: Any = None, mean: Sequence[float] = (0.45,) * 3,
                 std: Sequence[float] = (0.225,) * 3, num_clips: int = 3, data_cfg: Any = None) -> None:
        self.dataset, self.mean, self.std, self.num_clips = dataset, list(mean), list(std), num_clips
        self.data_cfg = data_cfg
        self.path: Path | None = None

    @classmethod
    def for_recipe(cls, recipe: Any, num_clips: int = 3) -> "ClipFigureCallback":
        return cls(None, recipe.data.mean, recipe.data.std, num_clips, data_cfg=recipe.data)

    def _clips(self) -> Any:
        if self.dataset is None and self.data_cfg is not None:
            from tubelet.data.builder import build_dataset

            for split in ("val", "train"):
                try:
                    ds = build_dataset(self.data_cfg, split)
                except TubeletError:  # a split the data does not have: try the next one
                    continue
                if len(ds):
                    self.dataset = ds
                    break
        if self.dataset is None:
            return None
        import torch

        clips = clips_from(self.dataset, self.num_clips)
        if clips.dtype == torch.uint8:  # a train split with data.device_transforms
            from tubelet.data.transforms import Normalize

            clips = Normalize(self.mean, self.std)(clips)
        return clips
