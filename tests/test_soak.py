"""A small soak of resume (``benchmarks/soak.py``): SIGKILL at random moments of ``tubelet fit --resume auto``
over a few cycles and seeds, then the final weights are bitwise those of an uninterrupted run, the folder
never held more than keep_last_k + 1 complete checkpoints and no temporary file is left."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak  # noqa: E402


@pytest.mark.slow
def test_random_kills_then_resume_auto_end_bitwise_equal(tmp_path):
    cfg, reference, startup = soak.prepare(tmp_path, max_steps=12)
    keep = soak.RECIPE["trainer"]["keep_last_k"]
    for seed in (0, 1):
        r = soak.soak_seed(cfg, tmp_path, seed, cycles=3, startup_s=startup, window_s=1.5, reference=reference)
        assert r.kills + r.finished_early == 3
        assert r.bitwise_equal, r
        assert r.max_checkpoints <= keep + 1 and r.final_checkpoints == keep, r
        assert (r.temp_left, r.orphans_left) == (0, 0), r
