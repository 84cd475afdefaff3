"""UTT SOT on held-out synthetic sequences and on the real VOT ``bag`` sequence, against the baseline that
repeats the first box: OPE success, precision and normalised precision (toolkit convention).

    python benchmarks/track_synthetic.py RUN_DIR [--split val] [--max-sequences N] [--bag ../shared/data/tracking/bag]

RUN_DIR is a ``tubelet fit utt_synthetic`` run. Prints a table (results in docs/tracking.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tubelet.config import load_recipe
from tubelet.data.datasets.tracking import load_sot_sequence, sot_sequences
from tubelet.engine.track import load_tracker, track_video
from tubelet.eval.tracking import sot_ope


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-sequences", type=int, default=0, help="the first N sequences of the split (0: all)")
    ap.add_argument("--bag", default=str(Path(__file__).resolve().parents[2] / "shared/data/tracking/bag"))
    args = ap.parse_args()
    recipe = load_recipe(Path(args.run_dir) / "config.yaml")
    tracker = load_tracker(args.run_dir)
    rows = []
    seqs = sot_sequences("synthetic", recipe.data.synthetic, args.split)
    seqs = seqs[:args.max_sequences] if args.max_sequences > 0 else seqs
    sets = [(f"synthetic {args.split} ({len(seqs)} sequences)", seqs)]
    if Path(args.bag).is_dir():
        sets.append(("VOT bag (196 frames, real)", [load_sot_sequence(args.bag)]))
    for name, group in sets:
        preds, base, gts = [], [], []
        for s in group:
            preds.append(track_video(tracker, s.reader(), s.init_box))
            base.append(np.repeat(s.init_box[None], len(s.boxes), 0))
            gts.append(np.where(s.visible[:, None], s.boxes, 0.0))
        for who, p in (("UTT", preds), ("first box repeated", base)):
            r = sot_ope(p, gts)
            rows.append((name, who, r["success"], r["precision"], r["norm_precision"]))
    print("| sequences | tracker | success AUC | precision@20 | norm. precision |")
    print("|---|---|---|---|---|")
    for name, who, s, p, n in rows:
        print(f"| {name} | {who} | {s:.1f} | {p:.1f} | {n:.1f} |")


if __name__ == "__main__":
    main()
