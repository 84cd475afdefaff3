"""Label maps: class names <-> integer ids.

Accepted files: ``labels.txt`` (one name per line, id = line number from 0; blank lines ignored),
JSON ``["name0", "name1", ...]`` or JSON ``{"name": id, ...}`` (ids must be 0..K-1, each once).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from tubelet.errors import DataError

__all__ = ["LabelMap", "load_label_map"]


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
            try:
                pairs = sorted((int(v), str(k)) for k, v in obj.items())
            except (TypeError, ValueError) as exc:
                raise DataError(f"label map '{p}': ids must be integers ({exc})") from exc
            ids = [i for i, _ in pairs]
            if ids != list(range(len(ids))):
                raise DataError(f"label map '{p}': ids must be 0..{len(ids) - 1}, each once; got {ids[:10]}...")
            return LabelMap(n for _, n in pairs)
        raise DataError(f"label map '{p}': expected a JSON list or object")
    return LabelMap(line.strip() for line in text.splitlines() if line.strip())
