"""``tubelet convert SRC DST --from torchvision|pyslowfast|mae_st|pytorchvideo``: import a foreign checkpoint
(MViTv2 and MViTv1-B from torchvision or PySlowFast, the space-time ViT from mae_st, the PyTorchVideo zoo's
ResNets, SlowFast, X3D, mobile-CPU EfficientX3d and MViTv1-B from pytorchvideo, PySlowFast's
Slow/C2D/I3D/SlowFast from pyslowfast)."""

from __future__ import annotations

import argparse

import yaml

from tubelet.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a torchvision/PySlowFast MViTv2 or MViTv1-B, mae_st ViT, or PyTorchVideo/PySlowFast zoo "
        "(ResNet, SlowFast, X3D, EfficientX3d, MViTv1-B) checkpoint to tubelet safetensors",
        description="Rename a foreign MViT, MAE-ST ViT or PyTorchVideo/PySlowFast zoo state dict onto a "
        "tubelet model and write "
        "safetensors (mae_st, PyTorchVideo MViT: q/k/v fused; mae_st: position tables resampled to the target grid). "
        "The source is read with safetensors or torch.load(weights_only=True); no code is unpickled.",
    )
    p.add_argument("src", help="source checkpoint (.pth/.pyth/.pt or .safetensors)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision", "pyslowfast", "mae_st", "pytorchvideo"])
    p.add_argument("--model", default=None, help="tubelet model name (default: inferred, e.g. mvitv2_s, mvitv1_b_16x4, vit_base, slowfast_r50_8x8, x3d_m)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="variant override for the target model, e.g. --set num_classes=174 (repeatable; YAML values)",
    )
    p.add_argument("--no-interpolate", action="store_true", help="fail instead of resampling relative-position tables")
    p.set_defaults(run=run)


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from tubelet.models.convert import convert_checkpoint

    result = convert_checkpoint(
        args.src,
        args.dst,
        args.source,
        model=args.model,
        overrides=_parse_overrides(args.overrides),
        interpolate_rel_pos_tables=not args.no_interpolate,
    )
    for note in result.notes:
        print(f"note: {note}")
    kwargs = "".join(f", {k}={v!r}" for k, v in result.overrides.items())
    print(f"wrote {args.dst}: {len(result.state)} tensors for {result.model}")
    print(f"load with: tubelet.create_model({result.model!r}, checkpoint={str(args.dst)!r}{kwargs})")
    return 0
