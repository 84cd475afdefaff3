"""Label maps: class names <-> integer ids, and the check that every sample's label is a class.

Accepted files: ``labels.txt`` (one name per line, id = line number from 0; blank lines ignored),
JSON ``["name0", "name1", ...]`` or JSON ``{"name": id, ...}`` (integer ids 0..K-1, each once).

A label outside ``[0, K)`` would otherwise surface as an ``IndexError`` inside the loss (or, for a
one-hot or a confusion matrix, as a silently wrong count) many steps into a run; :func:`label_errors`
finds every such sample up front, named by where it was written (``train.csv:7``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from tubelet.errors import DataError

if TYPE_CHECKING:
    from tubelet.data.datasets.base import Sample

__all__ = ["LabelMap", "check_labels", "label_errors", "label_range_message", "load_label_map"]


def label_range_message(where: str, label: int, num_classes: int, what: str) -> str:
    """``train.csv:7: label 12 is outside [0, 10) (model.num_classes=10)``."""
    return f"{where}: label {label} is outside [0, {num_classes}) ({what})"


def label_errors(samples: Sequence["Sample"], num_classes: int) -> list[int]:
    """Indices of the samples whose label is outside ``[0, num_classes)``: one pass over a label array, so
    a manifest of millions of rows costs well under a second."""
    labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))
    return np.flatnonzero((labels < 0) | (labels >= num_classes)).tolist()


def check_labels(samples: Sequence["Sample"], num_classes: int, what: str) -> None:
    """:class:`DataError` naming the first sample whose label is outside ``[0, num_classes)`` (and how many
    there are), before any of them reaches a loss."""
    bad = label_errors(samples, num_classes)
    if bad:
        s = samples[bad[0]]
        more = f" ({len(bad)} of {len(samples)} samples have such labels)" if len(bad) > 1 else ""
        raise DataError(label_range_message(s.source or s.path, s.label, num_classes, what) + more)


class LabelMap:
    """Bidirectional map between class names and ids ``0..K-1``."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = [str(n) for n in names]
        self._ids: dict[str, int] = {}
        for i, n in enumerate(self.names):
            if n in self._ids:
                raise DataError(f"label map: class name '{n}' appears twice (ids {self._ids[n]} and {i})")
            self._ids[n] = i

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise DataError(f"label map: unknown class name '{name}' (known: {len(self.names)} classes)") from None

    def name(self, idx: int) -> str:
        if not 0 <= int(idx) < len(self.names):
            raise DataError(f"label map: class id {idx} out of range [0, {len(self.names)})")
        return self.names[int(idx)]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "LabelMap":
        """Sorted unique names -> ids (the default when a manifest has names and no label map)."""
        return cls(sorted(set(names)))

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if p.suffix == ".json":
            p.write_text(json.dumps({n: i for i, n in enumerate(self.names)}, indent=1))
        else:
            p.write_text("".join(n + "\n" for n in self.names))

    def __repr__(self) -> str:
        return f"LabelMap({len(self.names)} classes)"


def load_label_map(path: str | os.PathLike) -> LabelMap:
    """Read a ``labels.txt`` or JSON label map; raises :class:`DataError` naming the file on problems."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"label map '{p}' not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"label map '{p}': invalid JSON ({exc})") from exc
        if isinstance(obj, list):
            return LabelMap(obj)
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, bool) or not isinstance(v, int):  # int(2.7) would quietly give 2
                    raise DataError(f"label map '{p}': the id of '{k}' must be an integer, got {json.dumps(v)}")
            pairs = sorted((v, str(k)) for k, v in obj.items())
            ids = [i for i, _ in pairs]
            if ids != list(range(len(ids))):
                raise DataError(f"label map '{p}': ids must be 0..{len(ids) - 1}, each once; got {ids[:10]}...")
            return LabelMap(n for _, n in pairs)
        raise DataError(f"label map '{p}': expected a JSON list or object")
    return LabelMap(line.strip() for line in text.splitlines() if line.strip())
