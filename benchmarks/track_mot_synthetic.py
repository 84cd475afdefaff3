"""UTT MOT on held-out synthetic sequences and the association alone on TUD-Campus / TUD-Stadtmitte, every
tracker run through ``tubelet track --mot``: HOTA, MOTA and IDF1 (trackeval, MOT15 rules: no distractor
preprocessing), combined over the sequences.

    python benchmarks/track_mot_synthetic.py --run mot=RUN_DIR --run unified=RUN_DIR [--split test]
        [--max-sequences N] [--work DIR] [--tud ../shared/data/tracking] [--tud-seeds 0,1,2]
        [--detector DETR_RUN [--nms-iou 0.5|none]]

Detections are a STAND-IN for a detector: each sequence's ground truth with Gaussian box noise, drops and
false positives (``tubelet.data.datasets.tracking.jittered_detections``, seeded per sequence), the same
for every tracker. Trackers: the IoU-only baseline (Hungarian on 1 - IoU, boxes not moved), UTT's
association alone (1 - GIoU, reject above 1.2, boxes not moved), and each run's track transformer moving
the tracks before the same association. TUD has no frames here, so only the two associations run there.
Prints markdown tables (results in docs/tracking.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

from tubelet.cli.main import main as cli
from tubelet.config import load_recipe
from tubelet.data.datasets.tracking import (jittered_detections, mot_sequences, read_mot_file, read_seqinfo,
                                            write_mot_sequence)
from tubelet.eval.tracking import mot_metrics

JITTER = {"box_noise": 0.05, "drop": 0.1, "false_positives": 0.5}


def track(folder: Path, out: Path, extra: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = cli(["track", str(folder), "--mot", "--out", str(out), *extra])
    if rc != 0:
        raise SystemExit(f"tubelet track {folder} {' '.join(extra)} failed with {rc}")


def table(title: str, scores: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}\n\n| tracker | HOTA | MOTA | IDF1 | IDsw |\n|---|---|---|---|---|")
    for who, r in scores.items():
        print(f"| {who} | {100 * r['HOTA']:.1f} | {100 * r['MOTA']:.1f} | {100 * r['IDF1']:.1f} | {int(r['IDSW'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR", help="a utt run to track with")
    ap.add_argument("--recipe", default="utt_mot_synthetic", help="whose synthetic set, when no run is given")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-sequences", type=int, default=0, help="the first N sequences of the split (0: all)")
    ap.add_argument("--work", default="mot_synthetic_eval", help="folder for the sequences and results")
    ap.add_argument("--tud", default=str(Path(__file__).resolve().parents[2] / "shared/data/tracking"))
    ap.add_argument("--tud-seeds", default="0,1,2", help="jitter seeds for TUD ('' : skip TUD)")
    ap.add_argument("--detector", default=None, metavar="RUN_DIR",
                    help="detect with this deformable_detr run instead of the jittered ground truth (every tracker)")
    ap.add_argument("--nms-iou", default=None, metavar="IOU|none",
                    help="--detector's NMS (default: its run's method.nms_iou)")
    args = ap.parse_args()
    if args.nms_iou is not None and not args.detector:
        raise SystemExit("--nms-iou sets up --detector, which is not given")
    runs = dict(r.split("=", 1) for r in args.run)
    recipe = load_recipe(Path(next(iter(runs.values()))) / "config.yaml") if runs else load_recipe(args.recipe)
    work = Path(args.work)
    seqs = mot_sequences("synthetic", recipe.data.synthetic, args.split)
    seqs = seqs[:args.max_sequences] if args.max_sequences > 0 else seqs
    trackers = {"IoU-only baseline (1 - IoU)": ["--link", "iou"], "UTT association alone (1 - GIoU)": []}
    trackers.update({f"UTT track transformer + association ({name})": ["--run", run] for name, run in runs.items()})
    detect = ["--detector", args.detector] if args.detector else []  # the same detector for every tracker
    detect += ["--nms-iou", args.nms_iou] if args.nms_iou is not None else []
    results: dict[str, dict] = {who: {} for who in trackers}
    for i, seq in enumerate(seqs):
        size = int(seq.info["imwidth"]), int(seq.info["imheight"])
        seq.det = jittered_detections(seq.gt, i, frame_size=size, num_frames=seq.num_frames, **JITTER)
        name = f"SYN-{i:03d}"
        folder = write_mot_sequence(seq, work / "sequences" / name)
        for k, (who, extra) in enumerate(trackers.items()):
            out = work / "results" / str(k) / f"{name}.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            track(folder, out, [*detect, *extra])
            results[who][name] = (seq.gt, read_mot_file(out, "results", seq.num_frames), seq.num_frames)
    if args.detector:
        from tubelet.engine.detector import load_detector

        given = None if args.nms_iou is None or args.nms_iou.lower() == "none" else float(args.nms_iou)
        nms = load_detector(args.detector, nms_iou="run" if args.nms_iou is None else given).nms_iou
        source = f"the detector {args.detector} ({'no NMS' if nms is None else f'NMS at IoU {nms:g}'})"
    else:
        source = f"jittered ground truth {JITTER}"
    table(f"synthetic {args.split}: {len(seqs)} sequences of {seqs[0].num_frames} frames, "
          f"{recipe.data.synthetic.size} px, detections = {source}",
          {who: mot_metrics(r)["COMBINED"] for who, r in results.items()})
    seeds = [int(s) for s in args.tud_seeds.split(",") if s.strip()]
    tud = Path(args.tud)
    if seeds and (tud / "TUD-Campus").is_dir():
        assoc = {who: extra for who, extra in trackers.items() if "--run" not in extra}
        for seed in seeds:
            per: dict[str, dict] = {who: {} for who in assoc}
            for name in ("TUD-Campus", "TUD-Stadtmitte"):
                folder = tud / name
                n = int(read_seqinfo(folder / "seqinfo.ini")["seqlength"])
                gt = read_mot_file(folder / "gt.txt", "gt", n)
                for k, (who, extra) in enumerate(assoc.items()):
                    out = work / "tud" / f"seed{seed}" / str(k) / f"{name}.txt"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    track(folder, out, ["--jitter-gt", str(folder / "gt.txt"), "--jitter-seed", str(seed),
                                        "--jitter-noise", str(JITTER["box_noise"]), "--jitter-drop", str(JITTER["drop"]),
                                        "--jitter-fp", str(JITTER["false_positives"]), *extra])
                    per[who][name] = (gt, read_mot_file(out, "results", n), n)
            table(f"TUD-Campus + TUD-Stadtmitte, jitter seed {seed}, detections = jittered ground truth {JITTER}",
                  {who: mot_metrics(r)["COMBINED"] for who, r in per.items()})


if __name__ == "__main__":
    main()
