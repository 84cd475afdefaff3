"""Which checkpoint a run resumes from, and whether it is one of this run.

Every training checkpoint records its run under :data:`RUN_KEY`: the effective recipe and the hash of
its identity (``tubelet.config.identity``: the recipe minus the keys a resume may change). A resume
continues the recorded recipe: a checkpoint whose recipe differs in a key of the identity is another
run's, and is refused with the keys and both values; the resumable keys that differ are applied and
listed in one console line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tubelet.config.identity import describe_differences, recipe_differences, run_identity
from tubelet.config.loader import to_dict
from tubelet.config.schema import Recipe
from tubelet.core.ckpt_format import checkpoint_problem, checkpoints_newest_first, read_training_state, safe_torch_load
from tubelet.errors import CheckpointError

RUN_KEY = "tubelet_run"  # {"identity": sha256 hex, "recipe": the effective recipe as a dict}
METRICS_KEY = "tubelet_metrics"  # the run's scalar metrics when the checkpoint was written

NEW_RUN_HINT = "start a new run (another run_dir, or --overwrite to replace the run in this one)"


def run_record(recipe: Recipe) -> dict[str, Any]:
    """What each checkpoint of ``recipe``'s run stores under :data:`RUN_KEY`."""
    return {"identity": run_identity(recipe), "recipe": to_dict(recipe)}


@dataclass
class Resume:
    """The checkpoint to resume from (None: start at step 0) and what was learnt choosing it."""

    path: Path | None = None
    step: int = 0  # its global step
    metrics: dict[str, float] = field(default_factory=dict)  # the run's metrics when it was written
    skipped: list[str] = field(default_factory=list)  # one line per checkpoint passed over, and why
    changed: list[tuple[str, Any, Any]] = field(default_factory=list)  # resumable keys set anew


def _resume(path: Path, state: Mapping[str, Any], skipped: list[str], changed: list) -> Resume:
    # only plain values leave here: the memory-mapped state must not outlive the checkpoint file,
    # which keep_last_k may delete later in the run
    metrics = {str(k): float(v) for k, v in dict(state.get(METRICS_KEY) or {}).items()}
    return Resume(path, int(state.get("global_step", 0)), metrics, skipped, changed)


def another_run(path: Path, state: Mapping[str, Any], recipe: Recipe) -> tuple[str | None, list]:
    """``(why checkpoint path is another run's, or None; the resumable keys that differ)``."""
    record = state.get(RUN_KEY)
    if not isinstance(record, Mapping) or not isinstance(record.get("recipe"), Mapping):
        return (f"{path}: checkpoint records no recipe (written before checkpoints recorded their run), so nothing "
                f"says it is of this run; {NEW_RUN_HINT}"), []
    if record.get("identity") == run_identity(recipe):
        _, changed = recipe_differences(record["recipe"], recipe)
        return None, changed
    identity, changed = recipe_differences(record["recipe"], recipe)
    if not identity:  # keys added to the schema since, at their defaults: the same run
        return None, changed
    return (f"{path}: checkpoint of another run: {describe_differences(identity)}; a resumed run continues its "
            f"recorded recipe, so resume without these changes or {NEW_RUN_HINT}"), changed


def choose_checkpoint(recipe: Recipe, resume: str | os.PathLike | None) -> Resume:
    """``None``: fresh start; ``"auto"``: the newest complete checkpoint of this run in
    ``run_dir/checkpoints`` (none: fresh start), passing over damaged ones and other runs'; a path: that
    checkpoint, which must be complete and of this run. A folder whose only usable checkpoints are
    another run's is refused rather than started afresh over them."""
    if resume is None:
        return Resume()
    if str(resume) != "auto":
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint to resume from not found")
        read_training_state(path, mmap=True)  # says what a file that is no tubelet checkpoint is, and what to do
        problem = checkpoint_problem(path)
        if problem is not None:
            raise CheckpointError(f"{path}: cannot resume from this checkpoint: {problem}")
        state = safe_torch_load(path, mmap=True)
        refusal, changed = another_run(path, state, recipe)
        if refusal is not None:
            raise CheckpointError(refusal)
        return _resume(path, state, [], changed)
    skipped: list[str] = []
    first_refusal: str | None = None
    for path in checkpoints_newest_first(Path(recipe.run_dir) / "checkpoints"):
        problem = checkpoint_problem(path)
        if problem is not None:
            skipped.append(f"skipping checkpoint {path}: {problem}")
            continue
        state = safe_torch_load(path, mmap=True)
        refusal, changed = another_run(path, state, recipe)
        if refusal is not None:
            skipped.append(f"skipping checkpoint {path}: another run's")
            first_refusal = first_refusal or refusal
            continue
        return _resume(path, state, skipped, changed)
    if first_refusal is not None:
        raise CheckpointError(first_refusal)
    return Resume(skipped=skipped)


def describe_changes(changed: list[tuple[str, Any, Any]]) -> str:
    return "resuming with changed settings: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changed)
