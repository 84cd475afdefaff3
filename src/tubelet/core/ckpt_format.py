"""Checkpoint files that are written atomically and loaded without unpickling code.

A training checkpoint ``NAME.ckpt`` is two files side by side:

* ``NAME-<token>.safetensors``: the weights (Lightning's ``state_dict`` and, with EMA, the
  ``current_model_state``), stored as ``<section>/<parameter name>``;
* ``NAME.ckpt``: everything else Lightning keeps (optimizer and LR-scheduler state, loop progress
  (step/epoch), callback states, the data-loader position) plus the RNG states of torch, numpy and
  Python, saved with ``torch.save`` so that it loads with ``torch.load(weights_only=True)``. It
  names its weights file (a plain name in its own folder; anything else is refused) and that file's
  byte size and sha256, which loading checks.

Each file is written to a temporary file in the same folder, flushed, ``fsync``-ed and moved into
place with ``os.replace``; the weights go first and ``NAME.ckpt`` last, so a checkpoint exists only
once both are complete and a crash mid-write leaves the previous checkpoints untouched. Temporary
files start with a dot and are never taken for checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from tubelet.core.io import atomic_write, remove_temp_files, safetensors_bytes, sha256_file
from tubelet.errors import CheckpointError

FORMAT = "tubelet-checkpoint-1"
WEIGHT_SECTIONS = ("state_dict", "current_model_state")
_STEP_RE = re.compile(r"step=(\d+)")


# ------------------------------------------------------------------------------------- plain-data check
def _plain(obj: Any, where: str) -> Any:
    """Convert to what ``torch.load(weights_only=True)`` accepts, or fail naming the offending key."""
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k if isinstance(k, (str, int)) else str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    raise CheckpointError(
        f"checkpoint entry '{where}' is a {type(obj).__name__}; only tensors, numbers, strings, lists and "
        "dicts may be stored (so that loading never runs code)"
    )


# ------------------------------------------------------------------------------------ save and load
def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write a Lightning checkpoint dict as ``path`` (state) + a safetensors weights file beside it."""
    path = Path(path)
    rest = dict(checkpoint)
    tensors: dict[str, torch.Tensor] = {}
    sections = []
    for section in WEIGHT_SECTIONS:
        weights = rest.pop(section, None)
        if weights is None:
            continue
        sections.append(section)
        for name, t in weights.items():
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(f"checkpoint '{section}.{name}' is not a tensor")
            tensors[f"{section}/{name}"] = t
    wpath = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:8]}.safetensors")
    size, sha = _write_weights(tensors, wpath)
    rest = _plain(rest, "checkpoint")
    rest["tubelet"] = {
        "format": FORMAT,
        "weights_file": wpath.name,
        "weights_bytes": size,
        "weights_sha256": sha,
        "weight_sections": sections,
    }
    try:
        atomic_write(path, lambda f: torch.save(rest, f))
    except BaseException:
        wpath.unlink(missing_ok=True)
        raise
    # An overwritten checkpoint leaves its old weights file behind: remove it now that the new one is in place.
    for old in _weights_files(path):
        if old.name != wpath.name:
            old.unlink(missing_ok=True)
    return path


def _write_weights(tensors: dict[str, torch.Tensor], path: Path) -> tuple[int, str]:
    """Write the weights file; its size and sha256 (hashed from the bytes written, before they are freed)."""
    data = safetensors_bytes(tensors, metadata={"format": FORMAT})
    atomic_write(path, lambda f: f.write(data))
    return len(data), hashlib.sha256(data).hexdigest()


def _weights_files(path: Path) -> list[Path]:
    """The weights files written for checkpoint ``path`` (``<stem>-<8 hex>.safetensors``)."""
    pattern = re.compile(re.escape(path.stem) + r"-[0-9a-f]{8}\.safetensors")
    return [p for p in path.parent.glob("*.safetensors") if pattern.fullmatch(p.name)]


# The first pickle of a pre-1.6 ``torch.save`` file: the long 0x1950a86a20f9469cfc6c (opcode LONG1, 10 bytes).
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_GLOBAL_RE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*[\w])")
_OPCODE_RE = re.compile(r"Unsupported operand (\d+)")
# What a file that is not a tubelet training checkpoint can still be used for.
_WEIGHTS_HINT = ("to start a run from its weights, set model.checkpoint to it (tensors under tubelet's names) or "
                 "import it with `tubelet convert` (torchvision, PySlowFast or mae_st names); only a checkpoint "
                 "written by `tubelet fit` can be resumed or evaluated")


def torch_file_kind(path: str | Path) -> str:
    """What the first bytes of ``path`` say it is: ``"empty"``, ``"zip"`` (``torch.save`` since torch 1.6),
    ``"legacy"`` (``torch.save`` before 1.6), ``"pickle"`` (``pickle.dump``), ``"safetensors"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(32)
        size = os.fstat(f.fileno()).st_size
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    # safetensors: an 8-byte little-endian header length (which may start with 0x80), then JSON
    if len(head) > 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"\x80"):  # pickle protocol 2 or later
        return "legacy" if _LEGACY_MAGIC in head else "pickle"
    return "unknown"


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _unpickling_detail(exc: BaseException) -> str:
    """What torch's weights-only reader met (a global it would import, an opcode), without torch's advice:
    that advice is to load again without the safety check, which would run the file's code."""
    text = str(exc)
    found = _GLOBAL_RE.search(text)
    if found:
        return f" (the first object it would import: {found.group(1)})"
    op = _OPCODE_RE.search(text)
    if op:
        return f" (pickle opcode {op.group(1)}, which only an unrestricted unpickler runs)"
    return ""


def safe_torch_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False,
                    expected: str = "a tubelet checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong with which file. ``expected``
    names what the caller wanted, for the message about a file that is something else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    kind = torch_file_kind(path)
    if kind == "empty":
        raise CheckpointError(f"{path}: the file is empty (0 bytes; an interrupted write or copy?), not {expected}")
    if kind == "pickle":
        raise CheckpointError(
            f"{path}: refused: a pickle, not {expected}: it was written with pickle.dump, not torch.save, and was "
            "not loaded, because unpickling it could run code")
    if kind == "safetensors":
        raise CheckpointError(
            f"{path}: a safetensors weights file, not {expected} (a torch.save file); load its weights with "
            "model.checkpoint or tubelet.load_model")
    if kind == "unknown":
        raise CheckpointError(
            f"{path}: not {expected}: it starts with neither a zip archive (torch.save) nor a pickle header "
            "(another format, or damaged)")
    try:
        # a pre-1.6 file is one pickle stream, which torch cannot memory-map
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and kind == "zip")
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: a pickle, not {expected}: besides tensors and plain data it holds Python "
            f"objects{_unpickling_detail(exc)}, and loading those could run code; it was not loaded"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, zip errors... for bad files
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_sentence(exc)}") from exc


def _describe_foreign(state: Any) -> str:
    """What a loaded file that lacks the 'tubelet' record is, in a few words."""
    if not isinstance(state, dict):
        return f"a torch.save file of a {type(state).__name__}"
    keys = list(state)
    if "pytorch-lightning_version" in state or {"state_dict", "optimizer_states"} <= set(keys) or (
            "state_dict" in state and ("global_step" in state or "epoch" in state)):
        version = state.get("pytorch-lightning_version")
        return f"a plain Lightning checkpoint{f' (Lightning {version})' if isinstance(version, str) else ''}"
    if keys and all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"a bare state_dict ({len(keys)} tensors, e.g. '{keys[0]}')"
    shown = ", ".join(repr(k) for k in keys[:4]) + (", ..." if len(keys) > 4 else "")
    return f"a torch.save file of a dict with keys {shown}" if keys else "a torch.save file of an empty dict"


def read_training_state(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The state file of a tubelet training checkpoint, or a one-line error that says what ``path`` is
    instead (a legacy torch.save file, a plain Lightning checkpoint, a bare state_dict ...) and what to do."""
    path = Path(path)
    if path.is_file() and torch_file_kind(path) == "legacy":
        raise CheckpointError(
            f"{path}: a legacy torch.save file (the format before torch 1.6, not a zip archive), not a tubelet "
            f"training checkpoint; {_WEIGHTS_HINT}")
    state = safe_torch_load(path, map_location=map_location, mmap=mmap)
    if isinstance(state, dict) and isinstance(state.get("tubelet"), dict):
        return state
    raise CheckpointError(
        f"{path}: {_describe_foreign(state)}, not a tubelet training checkpoint (it has no 'tubelet' record); "
        f"{_WEIGHTS_HINT}")


def weights_path(path: str | Path, info: Mapping[str, Any]) -> Path:
    """The weights file a checkpoint's ``tubelet`` record names, which must be a plain file name in the
    checkpoint's own folder: a crafted record naming ``../x`` or ``/etc/x`` could otherwise read any file."""
    path = Path(path)
    name = info.get("weights_file")
    plain = isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
    if not plain:
        raise CheckpointError(f"{path}: refused: the weights file it names, {name!r}, is not a file name in the "
                              f"checkpoint's own folder {path.parent}")
    return path.parent / name


def _read_weights(path: Path, info: Mapping[str, Any], ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    expected_bytes = info.get("weights_bytes")
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file of the checkpoint is missing")
    if expected_bytes is not None and path.stat().st_size != expected_bytes:
        raise CheckpointError(
            f"{path}: weights file has {path.stat().st_size} bytes, the checkpoint recorded {expected_bytes} "
            "(truncated or replaced)"
        )
    expected_sha = info.get("weights_sha256")  # absent in checkpoints written before it was recorded
    if expected_sha is not None and sha256_file(path) != expected_sha:
        raise CheckpointError(f"{path}: weights file's sha256 does not match the one {ckpt.name} recorded "
                              "(corrupt or replaced)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def _state_and_weights(path: Path, map_location: Any = "cpu", mmap: bool = False) -> tuple[dict[str, Any], dict]:
    """The training state of checkpoint ``path`` and the tensors of its weights file, both checked."""
    state = read_training_state(path, map_location=map_location, mmap=mmap)
    info = state["tubelet"]
    return state, _read_weights(weights_path(path, info), info, path)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` back into Lightning's dict form."""
    path = Path(path)
    state, weights = _state_and_weights(path, map_location=map_location)
    info = state["tubelet"]
    for section in info.get("weight_sections", []):
        prefix = f"{section}/"
        state[section] = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if map_location not in (None, "cpu"):
        for section in info.get("weight_sections", []):
            state[section] = {k: v.to(map_location) for k, v in state[section].items()}
    return state


def checkpoint_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Only the (model) ``state_dict`` of a training checkpoint."""
    _, weights = _state_and_weights(Path(path), mmap=True)
    return {k[len("state_dict/"):]: v for k, v in weights.items() if k.startswith("state_dict/")}


def checkpoint_shapes(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The training state of checkpoint ``path`` and the shapes of its (model) ``state_dict`` tensors, read
    from the weights file's header only, so that a checkpoint can be checked against a model before
    anything is loaded."""
    from safetensors import SafetensorError

    from tubelet.core.io import safetensors_shapes

    path = Path(path)
    state = read_training_state(path, mmap=True)
    weights = weights_path(path, state["tubelet"])
    try:
        shapes = safetensors_shapes(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    prefix = "state_dict/"
    return state, {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def remove_checkpoint(path: str | Path) -> None:
    path = Path(path)
    path.unlink(missing_ok=True)
    for weights in _weights_files(path):
        weights.unlink(missing_ok=True)


def is_complete(path: str | Path) -> bool:
    """Cheap completeness check: a readable zip with its weights file present at the recorded size."""
    return incomplete_reason(path) is None


def incomplete_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (a killed or damaged write, a file that is no tubelet
    checkpoint), or None when it is; the weights' checksum is not read (see :func:`checkpoint_problem`)."""
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return "not a checkpoint file"
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is not None:
                return "incomplete write (damaged archive)"
        state = safe_torch_load(path, mmap=True)
        if not isinstance(state, dict) or "tubelet" not in state:
            return "not a tubelet training checkpoint"
        info = state["tubelet"]
        weights = weights_path(path, info)
        if not weights.is_file():
            return f"incomplete write (its weights file {weights.name} is missing)"
        size = weights.stat().st_size
        if size != info["weights_bytes"]:
            return f"incomplete write (its weights file {weights.name} has {size} bytes, recorded {info['weights_bytes']})"
        with open(weights, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            return f"incomplete write (its weights file {weights.name} is truncated)"
        return None
    except CheckpointError as exc:
        return "unreadable (" + str(exc).split(": ", 1)[-1] + ")"
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, TypeError):
        return "incomplete write (not a complete archive)"


def checkpoint_problem(path: str | Path) -> str | None:
    """:func:`incomplete_reason`, then the weights' sha256 against the recorded one (reads the whole file)."""
    path = Path(path)
    reason = incomplete_reason(path)
    if reason is not None:
        return reason
    info = safe_torch_load(path, mmap=True)["tubelet"]
    expected = info.get("weights_sha256")
    weights = weights_path(path, info)
    if expected is not None and sha256_file(weights) != expected:
        return f"checksum mismatch (the sha256 of {weights.name} is not the recorded one)"
    return None


def checkpoints_newest_first(folder: str | Path) -> list[Path]:
    """The ``*.ckpt`` files of ``folder``, newest first by the step in their name, then modification time."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    candidates = [p for p in folder.glob("*.ckpt") if not p.name.startswith(".")]
    candidates.sort(key=lambda p: (checkpoint_step(p), p.stat().st_mtime), reverse=True)
    return candidates


_WEIGHTS_RE = re.compile(r"(.+)-[0-9a-f]{8}\.safetensors")


def remove_stale_files(folder: str | Path) -> list[Path]:
    """Remove what killed writes leave in a checkpoint folder: temporary files, and weights files whose
    ``.ckpt`` never landed or names another weights file. A weights file beside an unreadable ``.ckpt``
    stays (it is not known to be unused). Call it only when nothing writes into ``folder``."""
    folder = Path(folder)
    removed = remove_temp_files(folder)
    if not folder.is_dir():
        return removed
    for weights in sorted(folder.glob("*.safetensors")):
        m = _WEIGHTS_RE.fullmatch(weights.name)
        if m is None:
            continue
        ckpt = folder / f"{m.group(1)}.ckpt"
        if ckpt.is_file():
            try:
                named = safe_torch_load(ckpt, mmap=True)["tubelet"]["weights_file"]
            except (CheckpointError, KeyError, TypeError):
                continue
            if named == weights.name:
                continue
        weights.unlink(missing_ok=True)
        removed.append(weights)
    return removed


def checkpoint_step(path: str | Path) -> int:
    m = _STEP_RE.search(Path(path).name)
    return int(m.group(1)) if m else -1


def find_latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete ``*.ckpt`` in ``folder`` (by the step in its name, then modification time)."""
    for p in checkpoints_newest_first(folder):
        if is_complete(p):
            return p
    return None
