"""UTT SOT speed: frames per second of one tracking step (a search crop through the backbone, the target
and proposal decoders and the L refinements) at the paper's 352x352 search size, ResNet-18 and ResNet-50,
and the share of the time each component takes. The paper reports 25 fps on a GPU.

    python benchmarks/track_speed.py [--device cpu] [--steps 20] [--threads N]

Numbers depend on the machine; run it where nothing else runs (results in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
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
