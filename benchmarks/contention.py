"""Training speed on a busy machine: the quickstart ViT's training step, quiet and beside one
CPU-bound process, under each thread policy.

Two intra-op threads on two cores collapse when a third process wants a core: each parallel region
ends at a barrier, and libgomp's default wait policy spins at it (GOMP_SPINCOUNT, 300k iterations) so
the thread that arrived first burns the time slice that its descheduled partner, or the other
process, needed. Measured side by side in one run, each setting in a fresh process (the OpenMP wait
policy is read when torch loads libgomp):

- *spin, N threads*: torch's default (OMP_WAIT_POLICY unset);
- *passive, N threads*: ``OMP_WAIT_POLICY=PASSIVE``, waiting threads sleep on a futex at once;
- *short spin*: ``GOMP_SPINCOUNT=10000``, a spin of microseconds, then sleep;
- *1 thread*: no barrier to wait at;

each quiet and with one competing process (a Python busy loop, as another job's single-threaded
work would be). Rows: training steps/s (median of 5 timed windows after a warm-up) and the ratio of
the contended speed to the same policy quiet and to the best quiet setting. The target: contended
within 1.5x of quiet (ratio >= 0.67). ``tubelet`` itself sets the wait policy chosen from this table
(``tubelet.core.runtime``) unless the environment already sets one.

    python benchmarks/contention.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKER = "--worker"


def worker(threads: int, steps: int) -> dict:
    import torch

    from tubelet.config.loader import load_recipe
    from tubelet.methods import build_method

    torch.set_num_threads(threads)
    recipe = load_recipe("quickstart")
    method = build_method(recipe)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batch = {"video": torch.randn(32, 3, 8, 32, 32, generator=g), "label": torch.randint(0, 4, (32,), generator=g)}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        method(batch)["loss"].backward()
        opt.step()

    for _ in range(3):
        step()
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - t0))
    return {"steps_per_s": statistics.median(rates), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


def run_setting(env_extra: dict, threads: int, steps: int, competitor: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    busy = None
    if competitor:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
    try:
        out = subprocess.run([sys.executable, __file__, WORKER, str(threads), str(steps)], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])["steps_per_s"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == WORKER:
        print(json.dumps(worker(int(sys.argv[2]), int(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="steps per timed window")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    n = args.threads
    settings = [
        (f"spin, {n} threads", {}, n),
        (f"passive, {n} threads", {"OMP_WAIT_POLICY": "PASSIVE"}, n),
        (f"short spin (GOMP_SPINCOUNT=10000), {n} threads", {"GOMP_SPINCOUNT": "10000"}, n),
        ("1 thread", {}, 1),
    ]
    rows = []
    for name, env, threads in settings:
        quiet = run_setting(env, threads, args.steps, competitor=False)
        busy = run_setting(env, threads, args.steps, competitor=True)
        rows.append((name, quiet, busy))
    best_quiet = max(q for _, q, _ in rows)
    print(f"quickstart ViT training step (batch 32, 8x32x32), {os.cpu_count()} cores; steps/s, median of 5 "
          f"windows of {args.steps} steps; competitor: one Python busy loop")
    print()
    print("| setting | quiet | 1 competitor | competitor / quiet | competitor / best quiet |")
    print("|---|--:|--:|--:|--:|")
    for name, quiet, busy in rows:
        print(f"| {name} | {quiet:.2f} | {busy:.2f} | {busy / quiet:.2f} | {busy / best_quiet:.2f} |")


if __name__ == "__main__":
    main()
