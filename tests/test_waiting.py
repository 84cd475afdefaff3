"""Idle intra-op threads sleep instead of spinning: tubelet sets libgomp's wait policy before torch loads
(benchmarks/contention.py measures why), and leaves a policy the user chose alone."""

import os
import subprocess
import sys

import pytest

PROBE = "import os, sys; {pre}import tubelet; print(os.environ.get('OMP_WAIT_POLICY', '-'))"


def _policy(env_extra: dict, pre: str = "") -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TUBELET_KEEP_OMP_WAIT_POLICY")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("env, pre, expected", [
    ({}, "", "PASSIVE"),  # the default: set before torch is imported
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "", "ACTIVE"),  # the user's choice stays
    ({"GOMP_SPINCOUNT": "100000"}, "", "-"),  # so does a spin count
    ({"TUBELET_KEEP_OMP_WAIT_POLICY": "1"}, "", "-"),  # the opt-out
    ({}, "import torch; ", "-"),  # torch already loaded its OpenMP runtime: too late, nothing is pretended
])
def test_wait_policy(env, pre, expected):
    assert _policy(env, pre) == expected
