import os
from pathlib import Path

import pytest
import torch

# One intra-op thread per test worker: two workers on two cores must not oversubscribe.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEOS = SHARED / "data" / "videos"
TRACKING = SHARED / "data" / "tracking"


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    if not VIDEOS.is_dir():
        pytest.fail(f"test clips not found at {VIDEOS}: clone the project with ../shared beside it")
    return VIDEOS


def error_lines(stderr: str) -> list[str]:
    """The lines of a CLI error after the subcommand's usage block (``usage: ...`` and its indented
    continuation lines), which the CLI prints before its one-line error."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("usage:"):
        lines = lines[1:]
        while lines and lines[0].startswith(" "):
            lines = lines[1:]
    return lines


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny supervised run on the synthetic set (test_engine.TINY_RECIPE), trained through the CLI for
    4 steps; shared read-only by the tests of what a run folder holds (load_model, predict)."""
    import yaml
    from test_engine import TINY_RECIPE

    from tubelet.cli.main import main

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_RECIPE, "run_dir": str(tmp / "run")}))
    assert main(["fit", "--config", str(cfg)]) == 0
    return tmp / "run"
