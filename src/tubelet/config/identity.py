"""The identity of a training run: its effective recipe minus the keys that may change when it resumes.

A checkpoint records the recipe it was trained with and a hash of its identity, so that a resume can
tell a checkpoint of this run from one of another run (another learning rate, schedule, data, model,
seed, ...) and name the keys that differ. The keys in :data:`RESUMABLE_KEYS` change how a run is
executed or watched, never what it computes: where it lives, how it logs, how many threads and
workers it uses, how often it validates and checkpoints, and when it gives up. Everything else
(lr, schedule, max_steps, batch size, seed, data, model, method, precision, devices) is the run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from tubelet.config.loader import from_dict, to_dict
from tubelet.config.schema import Recipe
from tubelet.errors import ConfigError

# Keys a resumed run may change. Validation runs inside a save/restore of the RNG states and the
# checkpoint interval only decides when states are written, so neither changes the weights; the
# failure and non-finite policies decide whether a run stops, not what a continuing run computes.
RESUMABLE_KEYS: tuple[str, ...] = (
    "run_dir",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.val_check_interval",
    "trainer.checkpoint_every_n_steps",
    "trainer.keep_last_k",
    "trainer.num_threads",
    "trainer.collective_timeout_s",
    "trainer.nonfinite",
    "trainer.max_skipped_steps",
    "data.num_workers",
    "data.decode_threads",
    "data.max_failure_fraction",
)

_MISSING = "(not recorded)"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _resumable(dotted: str) -> bool:
    return dotted in RESUMABLE_KEYS


def identity_items(recipe: Recipe | Mapping[str, Any]) -> dict[str, Any]:
    """The flattened recipe without :data:`RESUMABLE_KEYS`."""
    tree = to_dict(recipe) if isinstance(recipe, Recipe) else recipe
    return {k: v for k, v in flatten(tree).items() if not _resumable(k)}


def run_identity(recipe: Recipe | Mapping[str, Any]) -> str:
    """sha256 of :func:`identity_items` (canonical JSON): equal for the runs a checkpoint may resume."""
    text = json.dumps(identity_items(recipe), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _normalised(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded recipe with the defaults of keys added to the schema since it was written filled in;
    as recorded when it no longer loads (a key was removed): then it differs in that key."""
    try:
        return to_dict(from_dict(dict(recorded), "<checkpoint>"))
    except ConfigError:
        return dict(recorded)


def recipe_differences(recorded: Mapping[str, Any], now: Recipe) -> tuple[list[tuple[str, Any, Any]],
                                                                           list[tuple[str, Any, Any]]]:
    """``(identity, resumable)``: the ``(key, recorded value, value now)`` that differ between a
    checkpoint's recorded recipe and ``now``; the first list makes it another run."""
    old = flatten(_normalised(recorded))
    new = flatten(to_dict(now))
    keys = sorted(set(old) | set(new))
    diffs = [(k, old.get(k, _MISSING), new.get(k, _MISSING)) for k in keys if old.get(k, _MISSING) != new.get(k, _MISSING)]
    return [d for d in diffs if not _resumable(d[0])], [d for d in diffs if _resumable(d[0])]


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    """``optim.lr recorded 0.001, now 0.1; seed recorded 0, now 1`` (at most ``limit`` keys, then a count)."""
    parts = [f"{k} recorded {_show(a)}, now {_show(b)}" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more keys")
    return "; ".join(parts)


def _show(value: Any) -> str:
    return value if value == _MISSING else repr(value)
