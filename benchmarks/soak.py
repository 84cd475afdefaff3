"""Soak test of resume: ``tubelet fit ... --resume auto`` killed with SIGKILL at random moments, again and
again, then let finish; the final weights must be bitwise those of an uninterrupted run.

For each seed, ``--cycles`` times: start ``tubelet fit RECIPE run_dir=... --resume auto`` (the same command
every time, as a SLURM requeue would), wait a random delay (one in five uniform over the start-up time of
the uninterrupted run, the others uniform over ``--window`` seconds after the process began training,
so that kills land during start-up, training, validation and checkpoint writes while the run lasts for
all the cycles), SIGKILL it.
Then one last start runs to the end. Checked:

- ``method.safetensors`` bitwise equal to the uninterrupted run's (same command without kills);
- the number of complete checkpoints, polled every few milliseconds while each process runs, never
  above ``trainer.keep_last_k + 1`` (one more while the newest is written and before the oldest goes),
  and ``keep_last_k`` at the end;
- no temporary file (``.*.tmp``) and no weights file without its ``.ckpt`` left at the end.

The phase each kill landed in is what the killed process last said it was doing: the child process
prints a line when it starts a training batch, a validation, a checkpoint write, or the final writes.

    python benchmarks/soak.py [--cycles 20] [--seeds 0 1 2] [--window 4] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHILD = "--child"
PHASE = "soak-phase "

MAX_STEPS = 300
RECIPE = {
    "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 16, "num_classes": 4,
              "overrides": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "drop_path_rate": 0.1}},
    "data": {"kind": "synthetic", "num_frames": 4, "crop_size": 16, "batch_size": 4,
             "synthetic": {"num_videos": 40, "num_classes": 4, "size": 20, "frames": 8}},
    "method": {"name": "supervised", "head_dropout": 0.2},
    "optim": {"lr": 1.0e-3, "warmup_steps": 2},
    "trainer": {"max_steps": MAX_STEPS, "checkpoint_every_n_steps": 2, "keep_last_k": 2, "num_threads": 1,
                "enable_progress_bar": False, "log_every_n_steps": 1, "accelerator": "cpu", "val_check_interval": 5},
}


# ----------------------------------------------------------------------------------- the child process
def child(argv: list[str]) -> int:
    """``tubelet fit`` that prints what it is doing; nothing here changes what it computes."""

    def say(phase: str) -> None:
        print(PHASE + phase, flush=True)

    say("start-up")  # imports included
    from lightning.pytorch.callbacks import Callback

    import tubelet.engine
    from tubelet.engine import checkpoint as ckpt_io

    class Phases(Callback):
        def on_train_batch_start(self, *args: object) -> None:
            say("training")

        def on_validation_start(self, *args: object) -> None:
            say("validation")

        def on_validation_end(self, *args: object) -> None:
            say("training")

        def on_train_end(self, *args: object) -> None:
            say("final writes")

    save = ckpt_io.SafeCheckpointIO.save_checkpoint

    def save_and_say(self, *args: object, **kwargs: object) -> None:
        say("checkpoint write")
        save(self, *args, **kwargs)
        say("training")

    ckpt_io.SafeCheckpointIO.save_checkpoint = save_and_say
    fit = tubelet.engine.fit

    def fit_with_phases(recipe, *args, callbacks=(), **kwargs):
        return fit(recipe, *args, callbacks=[*callbacks, Phases()], **kwargs)

    tubelet.engine.fit = fit_with_phases  # what tubelet.cli.fit imports when it runs
    from tubelet.cli.main import main

    return main(argv)


# ----------------------------------------------------------------------------------- the soak itself
@dataclass
class SeedResult:
    seed: int
    kills: int = 0
    finished_early: int = 0  # cycles whose process ended before its kill time
    phases: collections.Counter = field(default_factory=collections.Counter)
    max_checkpoints: int = 0
    final_checkpoints: int = 0  # complete checkpoints at the end: keep_last_k
    temp_left: int = 0
    orphans_left: int = 0
    bitwise_equal: bool = False
    seconds: float = 0.0


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _command(cfg: Path, run_dir: Path, resume: bool = True) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), CHILD, "fit", "--config", str(cfg), f"run_dir={run_dir}"]
    return cmd + (["--resume", "auto"] if resume else [])


def complete_checkpoints(folder: Path) -> int:
    from tubelet.core.ckpt_format import is_complete

    try:
        return sum(1 for p in folder.glob("*.ckpt") if is_complete(p))
    except OSError:  # a file pruned while it was looked at
        return 0


def leftovers(run_dir: Path) -> tuple[int, int]:
    """(temporary files, weights files whose .ckpt is gone) anywhere in the run folder."""
    temp = [p for p in run_dir.rglob(".*") if p.is_file() and p.name.endswith(".tmp")]
    ck = run_dir / "checkpoints"
    orphans = [p for p in ck.glob("*-*.safetensors") if not (ck / (p.name.rsplit("-", 1)[0] + ".ckpt")).exists()]
    return len(temp), len(orphans)


def run_once(cmd: list[str], kill: tuple[str, float] | None, poll: Path, limit: int = 900) -> tuple[bool, str, int, float]:
    """Start ``cmd``; ``kill = ("start", t)``: SIGKILL it ``t`` s after it started, ``("training", t)``: ``t`` s
    after it began training (however long its start-up took on a busy machine); None: let it end.
    Returns (killed, the phase it was killed in or ended in, most complete checkpoints seen in ``poll``,
    seconds)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    phase = ["interpreter start"]  # before the child has imported anything
    trained_at: list[float] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(PHASE):
                phase[0] = line[len(PHASE):].strip()
                if not trained_at and phase[0] == "training":
                    trained_at.append(time.perf_counter())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.perf_counter()
    seen = 0
    killed = False
    at = phase[0]
    while proc.poll() is None:
        seen = max(seen, complete_checkpoints(poll))
        now = time.perf_counter()
        if kill is not None:
            since = t0 if kill[0] == "start" else (trained_at[0] if trained_at else None)
            if since is not None and now - since >= kill[1]:
                at = phase[0]
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed = True
                break
        if now - t0 > limit:
            proc.kill()
            raise RuntimeError(f"{' '.join(cmd)} ran past {limit} s")
        time.sleep(0.005)
    reader.join(timeout=10)
    if not killed:
        at = phase[0]
        if kill is None and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    seen = max(seen, complete_checkpoints(poll))
    return killed, at, seen, time.perf_counter() - t0


def soak_seed(cfg: Path, root: Path, seed: int, cycles: int, startup_s: float, window_s: float,
              reference: dict) -> SeedResult:
    from safetensors.torch import load_file

    run_dir = root / f"seed{seed}"
    rng = random.Random(seed)
    result = SeedResult(seed)
    t0 = time.perf_counter()
    for _ in range(cycles):
        # a fifth of the kills during start-up, the rest over a window after training began: the run must
        # last for all the cycles, so each one may only take a short step forward
        kill = ("start", rng.uniform(0.0, startup_s)) if rng.random() < 0.2 else ("training", rng.uniform(0.0, window_s))
        killed, phase, seen, _ = run_once(_command(cfg, run_dir), kill, run_dir / "checkpoints")
        result.max_checkpoints = max(result.max_checkpoints, seen)
        if killed:
            result.kills += 1
            result.phases[phase] += 1
        else:
            result.finished_early += 1
    _, _, seen, _ = run_once(_command(cfg, run_dir), None, run_dir / "checkpoints")
    result.max_checkpoints = max(result.max_checkpoints, seen)
    result.final_checkpoints = complete_checkpoints(run_dir / "checkpoints")
    result.temp_left, result.orphans_left = leftovers(run_dir)
    got = load_file(run_dir / "method.safetensors")
    result.bitwise_equal = got.keys() == reference.keys() and all(
        (got[k].dtype == reference[k].dtype) and bool((got[k] == reference[k]).all()) for k in got)
    result.seconds = time.perf_counter() - t0
    return result


def prepare(root: Path, max_steps: int) -> tuple[Path, dict, float]:
    """Write the recipe, run it once without kills; (recipe file, its final weights, its start-up seconds:
    the time until the first training batch)."""
    import yaml
    from safetensors.torch import load_file

    cfg = root / "soak.yaml"
    recipe = {**RECIPE, "trainer": {**RECIPE["trainer"], "max_steps": max_steps}}
    cfg.write_text(yaml.safe_dump(recipe))
    ref = root / "reference"
    proc = subprocess.Popen(_command(cfg, ref, resume=False), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    t0, startup = time.perf_counter(), None
    for line in proc.stdout:  # type: ignore[union-attr]
        if startup is None and line.startswith(PHASE + "training"):
            startup = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError("the uninterrupted reference run failed")
    return cfg, load_file(ref / "method.safetensors"), startup or (time.perf_counter() - t0)


def table(results: list[SeedResult], keep_last_k: int) -> str:
    phases = sorted({p for r in results for p in r.phases})
    head = ["seed", "cycles", "kills", *[f"killed in {p}" for p in phases], "ended before kill",
            f"max complete ckpts (limit {keep_last_k + 1})", f"at the end ({keep_last_k})", "temp files left", "orphan weights left",
            "bitwise equal", "s"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.seed, r.kills + r.finished_early, r.kills, *[r.phases.get(p, 0) for p in phases],
                 r.finished_early, r.max_checkpoints, r.final_checkpoints, r.temp_left, r.orphans_left,
                 "yes" if r.bitwise_equal else "NO", f"{r.seconds:.0f}"]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=20, help="kills per seed before the last, uninterrupted start")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--window", type=float, default=3.0,
                   help="seconds after start-up over which most kill times are drawn (default 3)")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS)
    p.add_argument("--out", default=None, help="folder for the runs (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="2 cycles, 1 seed, 12 steps: checks that it runs")
    args = p.parse_args()
    if args.quick:
        args.cycles, args.seeds, args.max_steps, args.window = 2, [0], 12, 1.5
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tubelet-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg, reference, startup = prepare(root, args.max_steps)
    total = time.perf_counter() - t0
    print(f"uninterrupted run: {total:.1f} s, of which start-up {startup:.1f} s; kills at 0-{startup:.1f} s after the "
          f"start (1 in 5) or 0-{args.window:.1f} s after training began", flush=True)
    results = []
    for seed in args.seeds:
        results.append(soak_seed(cfg, root, seed, args.cycles, startup, args.window, reference))
        print(f"seed {seed} done in {results[-1].seconds:.0f} s", flush=True)
    print()
    print(table(results, RECIPE["trainer"]["keep_last_k"]))
    keep = RECIPE["trainer"]["keep_last_k"]
    ok = all(r.bitwise_equal and r.max_checkpoints <= keep + 1 and r.final_checkpoints == keep and not r.temp_left
             and not r.orphans_left for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        sys.exit(child(sys.argv[2:]))
    sys.exit(main())
