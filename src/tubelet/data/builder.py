"""Build datasets and collate functions from the ``data`` section of a recipe."""

from __future__ import annotations

from torch.utils.data import Dataset

from tubelet.config.schema import DataConfig
from tubelet.errors import ConfigError

SPLITS = ("train", "val", "test")


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """A map-style dataset of samples ``{"video": (C,T,H,W) float, "label": int, "index": int, ...}``.

    With ``repeated_sampling = r > 1`` on the train split, ``video`` is ``(r, C, T, H, W)`` and
    ``label`` has shape ``(r,)``.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'")
    if cfg.kind == "synthetic":
        from tubelet.data.synthetic import SyntheticVideoDataset

        return SyntheticVideoDataset(cfg, split)
    raise ConfigError(f"data.kind '{cfg.kind}' is not supported; use synthetic, manifest, folders, frames or images")
