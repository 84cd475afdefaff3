"""``tubelet data``: dataset utilities, one sub-subcommand each (``tubelet data synth ...``).

Each action is a pair ``add_<name>(sub)`` / ``run_<name>(args)`` registered in ``ACTIONS``.
"""

from __future__ import annotations

import argparse


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the procedural synthetic video set as video files + manifests")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--videos", type=int, required=True, help="number of clips (indices 0..N-1)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels")
    p.add_argument("--frames", type=int, default=None, help="frames per clip")
    p.add_argument("--classes", type=int, default=None, help="number of motion classes (2..8)")
    p.add_argument("--max-objects", type=int, default=None, help="objects per clip, at most (1..3)")
    p.add_argument("--fps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lossless", action="store_true", help="libx264rgb crf 0 in .mkv (bit-exact frames)")
    p.set_defaults(run=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    import dataclasses

    from tubelet.config.schema import SyntheticConfig
    from tubelet.data.synthetic import write_dataset
    from tubelet.errors import ConfigError

    if args.videos < 1:
        raise ConfigError(f"--videos must be at least 1, got {args.videos}")
    given = {
        "size": args.size, "frames": args.frames, "num_classes": args.classes, "max_objects": args.max_objects,
        "fps": args.fps, "seed": args.seed,
    }
    cfg = dataclasses.replace(SyntheticConfig(), **{k: v for k, v in given.items() if v is not None})
    cfg = dataclasses.replace(cfg, min_objects=min(cfg.min_objects, cfg.max_objects))
    out = write_dataset(args.out, args.videos, cfg, lossless=args.lossless)
    kind = "lossless .mkv" if args.lossless else "H.264 .mp4"
    print(f"wrote {args.videos} {kind} clips ({cfg.frames} frames, {cfg.size}x{cfg.size}, {cfg.num_classes} classes) "
          f"to {out}: manifest.csv, train/val/test.csv, labels.txt, annotations.json")
    return 0


def add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check every row of a manifest (parse, path, decode); report all bad rows")
    p.add_argument("manifest", help="CSV or JSONL manifest (path,label[,start,end][,caption])")
    p.add_argument("--root", default=None, help="data root: paths resolve under it and may not escape it")
    p.add_argument("--label-map", default=None, help="labels.txt or JSON label map for class-name labels")
    p.add_argument("--fast", action="store_true", help="open each file only; skip the full decode")
    p.add_argument("--backend", default="pyav", choices=["pyav", "torchcodec", "auto"])
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """One line per bad row (``where: reason``), then a summary; exit 1 when any row is bad."""
    from tubelet.cli.probe import probe_file
    from tubelet.data.datasets.manifest import read_manifest

    row_errors: list[tuple[str, str]] = []
    samples, _ = read_manifest(args.manifest, root=args.root, label_map=args.label_map, row_errors=row_errors)
    for _where, msg in row_errors:
        print(f"BAD {msg}", flush=True)
    bad_files = 0
    for s in samples:
        rec = probe_file(s.path, backend=args.backend, full=not args.fast)
        if not rec["ok"]:
            bad_files += 1
            print(f"BAD {s.source}: {s.path}: {rec['error']}", flush=True)
    total = len(samples) + len(row_errors)
    n_bad = len(row_errors) + bad_files
    print(f"checked {total} rows: {total - n_bad} ok, {n_bad} bad ({len(row_errors)} invalid rows, {bad_files} unreadable files)")
    return 1 if n_bad else 0


# action name -> parser builder; each builder sets ``run`` on its parser.
ACTIONS = {
    "synth": add_synth,
    "check": add_check,
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset utilities (synth, ...)")
    actions = p.add_subparsers(dest="data_command", metavar="ACTION")
    for add in ACTIONS.values():
        add(actions)
    p.set_defaults(run=lambda args: _missing_action(p))


def _missing_action(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2
