"""``tubelet flops``: parameters and GMACs of a registered model for one clip (one view)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "flops",
        help="count parameters and GMACs of a model",
        description="Parameters and GMACs for one clip. GMACs count one multiply-add as one "
        "operation (the papers' 'GFLOPs'); torch.utils.flop_counter's FLOPs are twice that.",
    )
    p.add_argument("--model", required=True, help="registered model name (see `tubelet models`)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="model options (fields of the variant's config, values as YAML), e.g. attention=castling "
        "castling_branch=false (Castling-ViT's inference form, without the auxiliary softmax branch)",
    )
    p.add_argument("--frames", type=int, default=16, help="clip length T (default 16; 1 for image models)")
    p.add_argument("--size", type=int, default=224, help="spatial size H = W (default 224)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: the variant's)")
    p.add_argument("--batch", type=int, default=1, help="clips per batch (default 1)")
    p.add_argument("--backward", action="store_true", help="also count the backward pass")
    p.add_argument(
        "--device",
        default="meta",
        help="'meta' (default) counts without computing anything; 'cpu' runs the model for real. "
        "The counts agree except for attention backward: CPU flash attention recomputes the scores "
        "(5 matmuls, counted as torch counts its GPU kernels), the meta path does not (4)",
    )
    p.add_argument(
        "--executed",
        action="store_true",
        help="count the attention formulation the device runs instead of the paper's multiply-adds "
        "(on CPU, MViT's 'concat' attention adds its relative-position columns: 68.5 instead of 64.2 "
        "GMACs for MViTv2-S at 16x224^2)",
    )
    p.add_argument("--by-op", action="store_true", help="also print GMACs per operator")
    p.set_defaults(run=run, overrides_anywhere=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from tubelet.errors import ConfigError
    from tubelet.flops import count_flops
    from tubelet.models.registry import create_model

    if args.frames < 1 or args.size < 1 or args.batch < 1:
        raise ConfigError("--frames, --size and --batch must be positive")
    import dataclasses

    from tubelet.models.registry import get_model_config

    base = get_model_config(args.model)
    fields = {f.name for f in dataclasses.fields(base)}
    # Build position tables for the requested grid (when the model has them), so that no
    # interpolation enters the count.
    wanted = {"num_frames": args.frames, "img_size": args.size, "num_classes": args.classes}
    overrides = {k: v for k, v in wanted.items() if k in fields and v is not None}
    options = model_options(args.overrides, base)
    clash = sorted(set(options) & set(wanted))
    if clash:
        raise ConfigError(f"{clash[0]}=...: give the clip size and classes with --frames, --size and --classes")
    get_model_config(args.model, **options)  # names a misspelt option before anything is built
    overrides.update(options)
    if args.classes is not None and "num_classes" not in fields:
        raise ConfigError(f"model '{args.model}' has no num_classes option")
    try:
        with torch.device(args.device):
            model = create_model(args.model, **overrides)
    except (TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot build '{args.model}' for {args.frames}x{args.size}x{args.size}: {exc}") from exc
    model.train(args.backward)
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=args.device)
    try:
        result = count_flops(model, x, backward=args.backward, executed=args.executed)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"'{args.model}' cannot take a {args.frames}x{args.size}x{args.size} clip: {exc}") from exc
    passes = "forward + backward" if args.backward else "forward"
    if args.executed:
        passes += ", executed attention formulation"
    print(f"model      {args.model}" + (f" ({' '.join(args.overrides)})" if args.overrides else ""))
    if getattr(model.cfg if hasattr(model, "cfg") else None, "attention", "softmax") == "castling":
        form = ("auxiliary softmax branch on (the training form; castling_branch=false counts the inference "
                "form)" if model.cfg.castling_branch else "inference form (no auxiliary branch)")
        print(f"attention  castling, {form}")
    print(f"input      {args.batch} x 3 x {args.frames} x {args.size} x {args.size} ({passes})")
    print(f"params     {result.params:,} ({result.params / 1e6:.2f} M)")
    print(
        f"GMACs      {result.gmacs:.2f}  (multiply-adds, the papers' 'GFLOPs'; "
        f"= {result.flops / 1e9:.2f} GFLOP in torch's count)"
    )
    if args.by_op:
        for op, macs in sorted(result.by_op.items(), key=lambda kv: -kv[1]):
            print(f"  {op:56s} {macs / 1e9:10.3f}")
    return 0


def model_options(pairs: list[str], base: object) -> dict[str, object]:
    """``KEY=VALUE`` words as model overrides, values parsed as YAML (a list becomes a tuple where the
    variant's field is one). A word without ``=`` is a one-line error."""
    import yaml

    from tubelet.errors import ConfigError

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"'{pair}': model options are KEY=VALUE (e.g. attention=castling)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{pair}: the value is not valid YAML ({exc.__class__.__name__})") from exc
        if isinstance(value, list) and isinstance(getattr(base, key, None), tuple):
            value = tuple(value)
        out[key] = value
    return out
