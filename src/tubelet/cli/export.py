"""``tubelet export --checkpoint W [--model NAME] --format onnx|torch-export|aoti|executorch [-o OUT] [--int8 |
--dtype bfloat16]``.

Exports the model to ``OUT`` (default: beside the checkpoint, ``NAME.onnx`` / ``.pt2`` / ``.aoti.pt2`` / ``.pte``), runs the
artifact in its runtime on the example clips and prints the largest difference from eager; the work is
``tubelet.export``. ``--checkpoint`` is a weights file (``backbone.safetensors``, a converted checkpoint)
or a run folder; ``--model`` (with ``--set KEY=VALUE`` options) says what to build when the file does not
say it itself. ``--random-init`` exports an untrained model (for timing only).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from tubelet.export import FORMATS

    p = sub.add_parser("export", help="export a model to torch.export, ONNX, AOTInductor or ExecuTorch, checked "
                                      "against eager")
    p.add_argument("--checkpoint", default=None, help="weights file or run folder (omit only with --random-init)")
    p.add_argument("--model", default=None, help="registered model name (default: what the weights file records)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="model option, e.g. --set num_classes=10 (repeatable; YAML values)")
    p.add_argument("--format", dest="fmt", required=True, choices=FORMATS)
    p.add_argument("--output", "-o", default=None, help="artifact path (default: NAME + the format's suffix)")
    p.add_argument("--int8", action="store_true", help="int8 linear layers (torchao; ONNX Runtime's quantizer for onnx)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="weights and activations inside the program (bfloat16: torch-export and aoti; its inputs "
                        "and outputs stay float32)")
    p.add_argument("--batch", type=int, default=2, help="example batch (2 or more: the batch stays dynamic)")
    p.add_argument("--frames", type=int, default=None, help="example frames (default: the model's num_frames)")
    p.add_argument("--size", type=int, default=None, help="example height and width (default: the model's img_size)")
    p.add_argument("--static-frames", action="store_true", help="fix the frame count even where it could vary")
    p.add_argument("--threads", type=int, default=None, help="threads of the check run")
    p.add_argument("--random-init", action="store_true", help="export --model untrained (no --checkpoint)")
    p.set_defaults(run=run)


def load_export_model(checkpoint: str | None, model: str | None, options: list[str], random_init: bool):
    """The model ``tubelet export`` exports: ``--model`` built with its options and ``--checkpoint`` loaded,
    or the model a self-describing weights file or run folder records."""
    from tubelet.cli.convert import _parse_overrides
    from tubelet.engine.load import load_model
    from tubelet.errors import ConfigError
    from tubelet.models import create_model

    if random_init and checkpoint is not None:
        raise ConfigError("--random-init exports an untrained model; do not give --checkpoint with it")
    if checkpoint is None and not random_init:
        raise ConfigError("give --checkpoint W (or --random-init with --model to export untrained weights)")
    overrides = _parse_overrides(options)
    if model is None:
        if random_init:
            raise ConfigError("--random-init needs --model NAME")
        if overrides:
            raise ConfigError("--set needs --model NAME (the weights file's own options are used otherwise)")
        return load_model(checkpoint)
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise ConfigError(f"{checkpoint}: a run folder records its model; do not give --model with it")
    return create_model(model, checkpoint=checkpoint, **overrides)


def run(args: argparse.Namespace) -> int:
    from tubelet.export import SUFFIX, example_inputs, export_model, model_name

    model = load_export_model(args.checkpoint, args.model, args.options, args.random_init)
    name = model_name(model)
    out = Path(args.output) if args.output else (
        Path(args.checkpoint).parent if args.checkpoint and Path(args.checkpoint).is_file()
        else Path(args.checkpoint or ".")) / (f"{name}{'_int8' if args.int8 else ''}"
                                              f"{'_bf16' if args.dtype == 'bfloat16' else ''}{SUFFIX[args.fmt]}")
    inputs = example_inputs(model, batch=args.batch, num_frames=args.frames, size=args.size)
    report = export_model(model, out, args.fmt, inputs, dynamic_frames=False if args.static_frames else None,
                          quantize=args.int8, threads=args.threads, dtype=args.dtype)
    frames = report.frames
    dyn = "batch" + (f", frames (multiples of {frames.multiple})" if frames is not None and frames.dynamic else "")
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB) and {report.path}.json: {name}, {args.fmt}"
          f"{', int8' if report.int8 else ''}{', ' + report.dtype if report.dtype != 'float32' else ''}")
    print(f"inputs: {', '.join(str(tuple(s['shape'])) for s in report.inputs)}; dynamic: {dyn}")
    if frames is not None and not frames.dynamic:
        print(f"frames static: {frames.reason}")
    print(f"max |exported - eager| = {report.max_abs_diff:.3g} ({report.relative_diff:.3g} of max |eager| "
          f"{report.output_scale:.3g})")
    for note in report.notes:
        print(f"note: {note}")
    return 0
