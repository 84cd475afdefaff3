"""UTT speed. SOT: frames per second of one tracking step (a search crop through the backbone, the target
and proposal decoders and the L refinements) at the paper's 352x352 search size, ResNet-18 and ResNet-50,
and the share of the time each component takes; the paper reports 25 fps on a GPU. MOT: frames per second
of the tracker's step (the frame letterboxed to ``--mot-size``, the backbone, every track moved by the
target decoder and the L refinements, Hungarian association with as many detections) at 10, 50 and 200
objects, the detector not included; the paper reports 8 fps on MOT16 with its detector.

    python benchmarks/track_speed.py [--device cpu] [--steps 20] [--threads N] [--mot-objects 10,50,200]
        [--mot-size 800] [--mot-frame 1080x1920] [--skip-sot]

Numbers depend on the machine; run it where nothing else runs (results in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from tubelet.methods.utt_mot import AssociationConfig, MOTTracker, UTTPropagator
from tubelet.models import create_model


def timed(model, device: str, steps: int) -> tuple[float, dict[str, float]]:
    spent: dict[str, float] = defaultdict(float)
    # the backbone runs through forward_features (no module hook fires), so its stages are timed
    backbone_stages = torch.nn.ModuleList([model.backbone.conv1, model.backbone.bn1, model.backbone.maxpool,
                                           model.backbone.layer1, model.backbone.layer2, model.backbone.layer3])
    parts = {"backbone": backbone_stages, "target decoder": model.target_decoder,
             "proposal decoder": model.proposal_tower, "target transformer (L iterations)": model.refine}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def pre(name):
        def hook(*_):
            sync()
            spent[f"_{name}"] = time.perf_counter()
        return hook

    def post(name):
        def hook(*_):
            sync()
            spent[name] += time.perf_counter() - spent[f"_{name}"]
        return hook

    for name, mod in parts.items():
        for m in (mod if isinstance(mod, torch.nn.ModuleList) else [mod]):
            m.register_forward_pre_hook(pre(name))
            m.register_forward_hook(post(name))
    ref = torch.randn(1, 3, 352, 352, device=device)
    box = torch.tensor([[[146.0, 146, 206, 206]]], device=device)
    with torch.no_grad():
        target = model.target_features(model.features(ref), box)
        for _ in range(3):  # warm-up
            model.track(target, model.features(ref), (352, 352))
        spent.clear()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            model.track(target, model.features(torch.randn(1, 3, 352, 352, device=device)), (352, 352))
        sync()
        total = time.perf_counter() - t0
    shares = {k: v / total for k, v in spent.items() if not k.startswith("_")}
    shares["other (RoIAlign, projections)"] = 1 - sum(shares.values())
    return steps / total, shares


def mot_fps(model, device: str, steps: int, objects: int, size: int, frame_hw: tuple[int, int]) -> float:
    """Frames per second of MOTTracker.update with the track transformer, ``objects`` tracks and as many
    detections a frame (each object drifting a few pixels per frame, so every track stays matched)."""
    H, W = frame_hw
    rng = np.random.default_rng(0)
    wh = rng.uniform(0.03, 0.1, (objects, 2)) * [W, H]
    xy = rng.uniform(0, 1, (objects, 2)) * ([W, H] - wh)
    tracker = MOTTracker(AssociationConfig(), UTTPropagator(model, size, (0.485, 0.456, 0.406),
                                                           (0.229, 0.224, 0.225), device))
    frames = rng.integers(0, 255, (2, H, W, 3), dtype=np.uint8)
    scores = np.full(objects, 0.9)

    def step(t: int) -> None:
        shift = np.array([2.0, 1.0]) * t
        boxes = np.concatenate([xy + shift, xy + shift + wh], 1)
        ids, _, _ = tracker.update(frames[t % 2], boxes, scores)
        if t > 0 and len(ids) != objects:
            raise RuntimeError(f"{len(ids)} of {objects} tracks matched: the benchmark's boxes moved too far")

    for t in range(3):  # warm-up; the first frame only starts the tracks
        step(t)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for t in range(3, 3 + steps):
        step(t)
    sync()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--mot-objects", default="10,50,200", help="MOT: objects per frame, comma separated ('' : none)")
    ap.add_argument("--mot-size", type=int, default=800, help="MOT: the letterboxed frame side")
    ap.add_argument("--mot-frame", default="1080x1920", help="MOT: frame H x W")
    ap.add_argument("--mot-models", default="utt_r18,utt_r50")
    ap.add_argument("--skip-sot", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_sot:
        sot(args)
    counts = [int(n) for n in args.mot_objects.split(",") if n.strip()]
    if counts:
        hw = tuple(int(v) for v in args.mot_frame.lower().split("x"))
        print(f"\nMOT: device {args.device}, {hw[0]}x{hw[1]} frames letterboxed to {args.mot_size}, C = 512, L = 6, "
              "detector not included")
        print("| model | " + " | ".join(f"{n} objects (fps)" for n in counts) + " |")
        print("|---|" + "---|" * len(counts))
        for name in args.mot_models.split(","):
            model = create_model(name).eval().to(args.device)
            fps = [mot_fps(model, args.device, args.steps, n, args.mot_size, hw) for n in counts]
            print(f"| {name} | " + " | ".join(f"{f:.2f}" for f in fps) + " |")


def sot(args: argparse.Namespace) -> None:
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, 352x352 search, C = 512, L = 6")
    print("| model | fps | " + " | ".join(["backbone", "target decoder", "proposal decoder",
                                           "target transformer", "other"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for name in ("utt_r18", "utt_r50"):
        model = create_model(name).eval().to(args.device)
        fps, s = timed(model, args.device, args.steps)
        cols = [s.get(k, 0.0) for k in ("backbone", "target decoder", "proposal decoder",
                                          "target transformer (L iterations)", "other (RoIAlign, projections)")]
        print(f"| {name} | {fps:.1f} | " + " | ".join(f"{100 * c:.0f}%" for c in cols) + " |")


if __name__ == "__main__":
    main()
