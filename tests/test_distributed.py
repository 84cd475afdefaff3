"""Distributed training on CPU (gloo) through Lightning: 1 vs 2 processes, dead and hung ranks, the
cross-process gather, the failure budget over ranks, strategy configuration (DDP, FSDP, SyncBN)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tubelet.config.loader import from_dict
from tubelet.engine.datamodule import ResumableSampler
from tubelet.errors import ConfigError

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "fault_runner.py"
VIDEOS = REPO.parent / "shared" / "data" / "videos"

TINY = {
    "model": {"name": "vit_tiny", "num_frames": 4, "img_size": 16, "num_classes": 4,
              "overrides": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}},
    "data": {"kind": "synthetic", "num_frames": 4, "crop_size": 16, "batch_size": 4,
             "synthetic": {"num_videos": 32, "num_classes": 4, "size": 16, "frames": 8}},
    "method": {"name": "supervised"},
    "optim": {"lr": 1.0e-3, "warmup_steps": 2},
    "trainer": {"max_steps": 4, "checkpoint_every_n_steps": 2, "keep_last_k": 2, "num_threads": 1,
                "enable_progress_bar": False, "log_every_n_steps": 1, "accelerator": "cpu"},
}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def _write(tmp_path, recipe, name="tiny.yaml"):
    cfg = tmp_path / name
    cfg.write_text(yaml.safe_dump(recipe))
    return cfg


def _ddp_args(cfg, run_dir, *extra):
    return [sys.executable, str(RUNNER), "fit", "--config", str(cfg), f"run_dir={run_dir}",
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", *extra]


def test_same_global_batch_gives_same_samples_per_step():
    """Rank r of W takes every W-th position of the epoch order, so with batch B/W per rank the union over
    ranks at step s is the one-process batch s, with the same per-sample seeds (same augmentations)."""
    n, batch = 22, 4
    one = list(ResumableSampler(n, seed=7))
    for world in (2, 4):
        ranks = [list(ResumableSampler(n, seed=7, num_replicas=world, rank=r)) for r in range(world)]
        per = batch // world
        for step in range(n // batch):
            got = sorted(x for r in ranks for x in r[step * per:(step + 1) * per])
            assert got == sorted(one[step * batch:(step + 1) * batch]), (world, step)


def test_recipe_seed_reaches_the_datasets(tmp_path):
    """fit builds datasets with seed=recipe.seed; synthetic clips themselves depend on data.synthetic.seed
    only (the data set), their augmentations on the recipe seed through the per-sample seeding."""
    from tubelet.engine.datamodule import SeededDataset, sample_seed
    from tubelet.engine.fit import build_datasets
    from tubelet.methods import build_method

    def first_sample(seed):
        r = from_dict({**TINY, "seed": seed, "run_dir": str(tmp_path / "run"),
                       "data": {**TINY["data"], "synthetic": {**TINY["data"]["synthetic"], "size": 24}}})
        train = build_datasets(r, build_method(r))["train"]
        return SeededDataset(train)[(0, sample_seed(seed, 0, 0), 0)]["video"]

    a, b, c = first_sample(1), first_sample(1), first_sample(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{VIDEOS / 'video_0.mov'},0\n{VIDEOS / 'video_90.mov'},1\n")
    r = from_dict({**TINY, "seed": 5, "model": {**TINY["model"], "num_classes": 2},
                   "data": {"kind": "manifest", "train": str(manifest), "val": str(manifest), "num_frames": 4,
                            "crop_size": 16}})
    datasets = build_datasets(r, build_method(r))
    assert datasets["train"].seed == 5 and datasets["val"].seed == 5  # clip draws follow the recipe seed


def _max_diff(a: dict, b: dict) -> float:
    """Largest weight difference, leaving out the key biases (the middle third of each ``qkv.bias``).
    A key bias adds the same score to every key of a query, which softmax ignores: its gradient is zero
    in exact arithmetic and float rounding noise in practice, and Adam, dividing by that noise's own
    scale, turns it into steps of about the learning rate whatever the batch split."""
    out = 0.0
    for k in a:
        d = (a[k] - b[k]).abs()
        if k.endswith("attn.qkv.bias"):
            third = d.shape[0] // 3
            d = torch.cat([d[:third], d[2 * third:]])
        out = max(out, d.max().item())
    return out


def test_two_process_ddp_equals_one_process(tmp_path):
    """``tubelet fit ... trainer.devices=2 trainer.strategy=ddp`` (gloo, Lightning's subprocess launcher)
    with half the per-process batch ends with the weights of one process (to float rounding)."""
    from tubelet.cli.main import main

    cfg = _write(tmp_path, TINY)
    assert main(["fit", "--config", str(cfg), f"run_dir={tmp_path / 'one'}"]) == 0
    proc = subprocess.run(_ddp_args(cfg, tmp_path / "two", "data.batch_size=2"), env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports
    a = load_file(tmp_path / "one" / "method.safetensors")
    b = load_file(tmp_path / "two" / "method.safetensors")
    init = from_dict({**TINY, "run_dir": str(tmp_path / "x")})
    from tubelet.methods import build_method

    torch.manual_seed(init.seed)
    start = build_method(init).state_dict()
    assert a.keys() == b.keys()
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    diff = _max_diff(a, b)
    assert moved > 1e-4  # training changed the weights ...
    assert diff < 1e-6, diff  # ... identically with 1 and 2 processes
    ckpt = torch.load(tmp_path / "two" / "checkpoints" / "step=000004.ckpt", weights_only=True)
    loader_state = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["num_replicas"] == 2


@pytest.mark.slow
def test_torchrun_launch_equals_one_process(tmp_path):
    """``torchrun --standalone --nproc_per_node 2 tubelet fit ...``: Lightning detects torchelastic's
    environment (TorchElasticEnvironment) and trains like its own launcher does."""
    from tubelet.cli.main import main

    cfg = _write(tmp_path, TINY)
    assert main(["fit", "--config", str(cfg), f"run_dir={tmp_path / 'one'}"]) == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    tubelet = Path(sys.executable).with_name("tubelet")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(tubelet), "fit", "--config",
                           str(cfg), f"run_dir={tmp_path / 'two'}", "data.batch_size=2", "trainer.devices=2",
                           "trainer.strategy=ddp", "trainer.accelerator=cpu"],
                          env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(tmp_path / "one" / "method.safetensors")
    b = load_file(tmp_path / "two" / "method.safetensors")
    assert _max_diff(a, b) < 1e-6


def _start_ddp(tmp_path, timeout_s, max_steps=400):
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(_env(), TUBELET_TEST_STEP_SLEEP="0.2", TUBELET_TEST_PIDS=str(pids))
    cfg = _write(tmp_path, TINY)
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(_ddp_args(cfg, tmp_path / "run", "data.batch_size=2", f"trainer.max_steps={max_steps}",
                                      f"trainer.collective_timeout_s={timeout_s}"),
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while not (pids / "1.pid").exists() or not (pids / "0.pid").exists():
        assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
        assert time.time() < deadline, "the two ranks did not start"
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps in
    return proc, int((pids / "1.pid").read_text())


def _wait_survivor(proc, tmp_path, limit):
    t0 = time.time()
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the surviving rank still runs {limit} s after its peer died (silent hang)")
    return rc, time.time() - t0, (tmp_path / "log.txt").read_text()


def test_killed_rank_ends_the_other_with_a_clear_error(tmp_path):
    timeout_s = 60
    proc, rank1 = _start_ddp(tmp_path, timeout_s)
    os.kill(rank1, signal.SIGKILL)
    rc, took, log = _wait_survivor(proc, tmp_path, timeout_s + 60)
    assert rc != 0
    # rank 0's next collective fails, or, if it is busy elsewhere, the launcher's watchdog finds the
    # dead child first and ends every process: either way rank 0 says so and how to resume
    assert ("rank 0: a collective operation failed: another process died or did not answer" in log
            or f"rank 0: another process died (pid {rank1}, exit code -9)" in log), log[-3000:]
    assert "restart with --resume auto" in log


@pytest.mark.slow
def test_hung_rank_ends_the_other_at_the_collective_timeout(tmp_path):
    """A rank that stops answering (SIGSTOP, e.g. a stuck data read) is not noticed by the socket: the
    collective timeout ends the survivor."""
    timeout_s = 25
    proc, rank1 = _start_ddp(tmp_path, timeout_s)
    os.kill(rank1, signal.SIGSTOP)
    try:
        rc, took, log = _wait_survivor(proc, tmp_path, timeout_s + 45)
    finally:
        os.kill(rank1, signal.SIGKILL)
    assert rc != 0 and took >= timeout_s - 5
    assert f"within trainer.collective_timeout_s={timeout_s} s" in log and "Timed out" in log


_GATHER = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    torch.set_num_threads(1)
    rank = int(sys.argv[1])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
    from tubelet.core.dist import all_gather_with_grad, all_gather_no_grad, rank as get_rank, world_size
    assert (get_rank(), world_size()) == (rank, 2)
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    g = all_gather_with_grad(x)
    assert g.shape == (4, 3) and g[:2].eq(1).all() and g[2:].eq(2).all()
    # loss of rank r weights row block b by (r + 1) * (b + 1): d/dx of the sum of both ranks' losses
    w = torch.tensor([1.0, 1.0, 2.0, 2.0]).unsqueeze(1) * (rank + 1)
    (g * w).sum().backward()
    expect = (1 + 2) * (rank + 1)  # own block weight (b = rank) summed over the two ranks' losses
    assert torch.allclose(x.grad, torch.full_like(x, float(expect))), x.grad
    assert torch.equal(all_gather_no_grad(x.detach()), g.detach())
    dist.barrier()
    dist.destroy_process_group()
    print("OK", rank, flush=True)
    # Every check above has passed. Skip interpreter teardown: with torch 2.13 a bare gloo script that
    # ran an autograd all_gather sometimes aborts there ("terminate called without an active
    # exception", SIGABRT) after its work is done; the Lightning-launched runs in this file are unaffected.
    os._exit(0)
""")


def test_all_gather_with_grad_over_two_processes(tmp_path):
    # one implementation in core, which rho-SSL's gather uses
    import tubelet.core.dist as engine_dist
    from tubelet.methods import contrastive

    assert engine_dist.all_gather_with_grad is contrastive.all_gather_with_grad
    x = torch.randn(3, 2)
    assert contrastive.gather(x) is x and engine_dist.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]  # one process
    assert engine_dist.all_gather_objects([("f", 0)]) == [("f", 0)]
    script = tmp_path / "gather.py"
    script.write_text(_GATHER)
    init = tmp_path / "pg"
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(init)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"OK {r}" in out, out[-3000:]


def test_failure_budget_counts_bad_files_of_every_rank(tmp_path):
    """One unreadable file in each rank's first batch: each rank alone is within the budget (1 <= 1.6),
    together they are over it (2 > 0.2 x 8); both ranks stop, and bad_files.txt lists both files."""
    good = [VIDEOS / n for n in ("video_0.mov", "video_90.mov", "video_180.mov", "video_270.mov", "unordered.mov",
                                 "frames.webm")]
    bad = [tmp_path / "bad_a.mp4", tmp_path / "bad_b.mp4"]
    for p in bad:
        p.write_bytes(os.urandom(2048))
    first = [ResumableSampler(8, seed=0, num_replicas=2, rank=r).order(0)[0] for r in range(2)]
    rows, it = [], iter(good)
    for i in range(8):
        rows.append(bad[first.index(i)] if i in first else next(it))
    manifest = tmp_path / "train.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(rows)))
    recipe = {**TINY, "seed": 0,
              "model": {**TINY["model"], "num_classes": 2},
              "data": {"kind": "manifest", "train": str(manifest), "val": str(manifest), "num_frames": 4,
                       "crop_size": 16, "batch_size": 2, "max_failure_fraction": 0.2, "num_workers": 0}}
    cfg = _write(tmp_path, recipe)
    proc = subprocess.run(_ddp_args(cfg, tmp_path / "run"), env=_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    assert "2 of 8 samples failed to load" in proc.stderr, proc.stderr[-3000:]
    listed = (tmp_path / "run" / "bad_files.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == sorted(map(str, bad))


@pytest.mark.slow
def test_nan_loss_on_one_rank_stops_every_rank_naming_the_step(tmp_path):
    cfg = _write(tmp_path, TINY)
    proc = subprocess.run(_ddp_args(cfg, tmp_path / "run", "data.batch_size=2", "trainer.max_steps=6"),
                          env=dict(_env(), TUBELET_TEST_NAN_LOSS="3:1"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0
    last = tmp_path / "run" / "checkpoints" / "step=000002.ckpt"
    # rank 0 (its own loss finite) reports the decision it shares with rank 1, not a dead peer
    assert "non-finite loss" in proc.stderr and "another rank) at step 3 " in proc.stderr, proc.stderr[-3000:]
    assert f"last good checkpoint: {last}" in proc.stderr
    assert "collective operation failed" not in proc.stderr


@pytest.mark.slow
def test_nan_loss_on_one_rank_skipped_on_every_rank(tmp_path):
    """Lightning refuses a skipped (None) training_step with several processes; the engine runs a zero
    loss through DDP instead and drops the update on every rank."""
    cfg = _write(tmp_path, TINY)
    proc = subprocess.run(_ddp_args(cfg, tmp_path / "run", "data.batch_size=2", "trainer.max_steps=5",
                                    "trainer.nonfinite=skip"),
                          env=dict(_env(), TUBELET_TEST_NAN_LOSS="2:1"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["global_step"] == 5
    weights = load_file(tmp_path / "run" / "method.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.slow
def test_two_process_resume_after_kill_is_bitwise_exact(tmp_path):
    """Both ranks killed while rank 0 writes step 6 (dropout and drop path on): ``--resume auto`` on 2
    processes continues from step 4 and ends bitwise equal to the uninterrupted 2-process run."""
    recipe = {**TINY, "model": {**TINY["model"], "overrides": {**TINY["model"]["overrides"], "drop_path_rate": 0.2}},
              "method": {"name": "supervised", "head_dropout": 0.3},
              "trainer": {**TINY["trainer"], "max_steps": 8, "keep_last_k": 3}}
    cfg = _write(tmp_path, recipe)
    args = ["data.batch_size=2"]
    straight = subprocess.run(_ddp_args(cfg, tmp_path / "a", *args), env=_env(), cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    pids, marker = tmp_path / "pids", tmp_path / "blocked"
    pids.mkdir()
    env = dict(_env(), TUBELET_TEST_BLOCK_CKPT="step=000006", TUBELET_TEST_MARKER=str(marker),
               TUBELET_TEST_PIDS=str(pids))
    proc = subprocess.Popen(_ddp_args(cfg, tmp_path / "b", *args), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    for r in (1, 0):
        os.kill(int((pids / f"{r}.pid").read_text()), signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = subprocess.run(_ddp_args(cfg, tmp_path / "b", *args, "--resume", "auto"), env=_env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout and "step=000004.ckpt" in resumed.stderr + resumed.stdout
    a = load_file(tmp_path / "a" / "method.safetensors")
    b = load_file(tmp_path / "b" / "method.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "step=000008.ckpt", weights_only=True)
    assert len(ckpt["rng_per_rank"]) == 2  # every rank's RNG states travel in the checkpoint


def test_strategy_configuration(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from tubelet.engine.distributed import strategy_from_recipe
    from tubelet.engine.trainer import build_trainer

    fsdp = strategy_from_recipe("fsdp", 42)
    assert isinstance(fsdp, FSDPStrategy) and fsdp._timeout.total_seconds() == 42
    with pytest.raises(ConfigError, match="collective_timeout_s"):
        strategy_from_recipe("ddp", 0)
    unused = strategy_from_recipe("ddp_find_unused_parameters_true", 10)  # the SwAV recipe's
    assert isinstance(unused, DDPStrategy) and unused._ddp_kwargs["find_unused_parameters"] is True
    assert unused._timeout.total_seconds() == 10
    assert strategy_from_recipe("single_device", 10) == "single_device"  # Lightning's own names pass through

    def trainer(**t):
        r = from_dict({**TINY, "run_dir": str(tmp_path / "run"), "trainer": {**TINY["trainer"], **t}})
        deterministic = torch.are_deterministic_algorithms_enabled()
        try:
            return build_trainer(r)
        finally:
            torch.use_deterministic_algorithms(deterministic)

    tr = trainer(devices=2, strategy="auto", sync_batchnorm=True, collective_timeout_s=77)
    assert isinstance(tr.strategy, DDPStrategy) and tr.strategy._timeout.total_seconds() == 77
    assert tr.strategy._layer_sync is not None  # SyncBatchNorm conversion happens at setup
    assert tr.world_size == 2
    with pytest.raises(ConfigError, match="fsdp needs GPUs"):
        trainer(strategy="fsdp")


def test_launcher_watchdog_lets_rank_0_say_why_it_ends():
    """When Lightning's watchdog finds a dead child before rank 0's collective fails, it SIGKILLs rank
    0; report_dead_peers prints tubelet's message first."""
    script = textwrap.dedent("""
        import subprocess, sys
        from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
        from tubelet.engine.distributed import report_dead_peers
        report_dead_peers(lambda pid, code: f"rank 0: another process died (pid {pid}, exit code {code})")
        child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        child.wait()
        _ChildProcessObserver(main_pid=__import__("os").getpid(), child_processes=[child])._run()
        print("not reached")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=120,
                         check=False)
    assert out.returncode == -signal.SIGKILL and "not reached" not in out.stdout
    assert "rank 0: another process died (pid " in out.stderr and "exit code 3)" in out.stderr
