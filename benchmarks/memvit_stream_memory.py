"""``tubelet predict --stream`` runs at constant memory: peak RSS on a 10-minute video vs a 1-minute one.

A tiny MeMViT run folder (random weights: memory use does not depend on them) and two synthetic videos
(32x32 at 30 fps, H.264) of 1 and 10 minutes are written to a temporary folder; each video is streamed by
``tubelet predict VIDEO --run RUN --stream`` in a fresh process, and that process's peak resident set
size (``ru_maxrss`` from ``wait4``) is reported. Target: the 10-minute peak within 10% of the 1-minute one.
Peak memory does not depend on machine load (only the run time does, which is not reported).

``--quick``: 10 and 60 seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

RECIPE = {
    "model": {"name": "memvit_16", "num_frames": 4, "img_size": 32, "num_classes": 4,
              "overrides": {"depth": 2, "transitions": [1], "kv_stride": [1, 2, 2], "head_dropout": 0.0}},
    "data": {"kind": "synthetic", "num_frames": 4, "sampling_rate": 8, "crop_size": 32, "test_short_side": 32,
             "synthetic": {"num_videos": 8, "num_classes": 4, "size": 32, "frames": 8}},
    "method": {"name": "supervised"},
    "trainer": {"accelerator": "cpu", "num_threads": 1},
}


def write_run(run: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from tubelet.config import load_recipe
    from tubelet.methods import build_method

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(RECIPE))
    torch.manual_seed(0)
    method = build_method(load_recipe(run / "config.yaml", []))
    save_file({k: v.contiguous() for k, v in method.state_dict().items()}, str(run / "method.safetensors"))


def write_long_video(path: Path, seconds: int) -> None:
    from tubelet.data.synthetic import write_video

    rng = np.random.default_rng(seconds)
    base = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)  # 10 s of frames, repeated with a shift
    frames = np.concatenate([np.roll(base, i, axis=2) for i in range(seconds // 10)], axis=0)
    write_video(path, frames, fps=30)


def peak_rss_mb(video: Path, run: Path) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "tubelet.cli.main", "predict", str(video), "--run", str(run),
                             "--stream", "--topk", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = proc.stdout.read().decode()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"tubelet predict --stream failed on {video} (status {status})")
    return usage.ru_maxrss / 1024, sum(1 for line in out.splitlines() if line.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    short, long = (10, 60) if args.quick else (60, 600)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        write_run(tmp_path / "run")
        rows = []
        for seconds in (short, long):
            video = tmp_path / f"long_{seconds}s.mp4"
            write_long_video(video, seconds)
            rss, clips = peak_rss_mb(video, tmp_path / "run")
            rows.append((seconds, clips, rss))
    print("| video | clips streamed | peak RSS (MB) | vs shortest |")
    print("|---|--:|--:|--:|")
    for seconds, clips, rss in rows:
        print(f"| {seconds} s | {clips} | {rss:.1f} | {rss / rows[0][2]:.3f}x |")


if __name__ == "__main__":
    main()
