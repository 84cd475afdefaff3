"""Deployment: a registered model out of Python, checked against eager, quantised to int8, and loaded back
as a runner ``(B, C, T, H, W) -> logits`` for ``tubelet predict --runtime``.

Formats (``export_model(model, path, fmt)``):

- ``torch-export``: ``torch.export`` with a dynamic batch, and a dynamic frame count where the model's
  graph allows it (:func:`frame_policy`); saved with ``torch.export.save`` (``.pt2``).
- ``onnx``: the same ExportedProgram through the dynamo ONNX exporter, validated by ``onnx.checker``
  (``.onnx``) and run in ONNX Runtime.
- ``aoti``: the same ExportedProgram compiled ahead of time by AOTInductor into a shared library inside a
  ``.aoti.pt2`` package (``torch._inductor.aoti_compile_and_package``), with Inductor's freezing on (weights
  are constants, so batch norms fold into the convolutions and pointwise ops fuse with them). It needs a C++
  compiler where it is made (g++ or clang++, or ``$CXX``), not where it runs: the package loads in any
  Python with the same torch (``torch._inductor.aoti_load_package``). The fastest CPU runtime of the three
  for convolutional networks (benchmarks/README.md, "Deployment latency").
- ``executorch``: the ExportedProgram lowered to ExecuTorch with the XNNPACK delegate (``.pte``). An op
  that neither XNNPACK nor the portable kernels can run is an error naming it (every 3-D convolution:
  XNNPACK delegates 2-D convolutions only, and the portable convolution kernel takes 3-D/4-D input).

Every export writes ``PATH.json`` beside the artifact: the model's name and variant, the input shapes
and which dimensions are dynamic, and the largest difference from eager measured at export time.
:func:`load_runtime` reads it to refuse an input the program was not exported for with a one-line error.

Int8 (``quantize=True``): the linear layers' weights and activations (dynamic per-token activation
scales, per-channel weight scales). For ``torch-export`` and ``executorch`` through torchao's
``Int8DynamicActivationInt8WeightConfig`` (``torch.ao.quantization`` is deprecated in favour of torchao);
for ``onnx`` through ONNX Runtime's ``quantize_dynamic`` on the exported fp32 graph's MatMul/Gemm nodes
(torchao's tensor subclasses have no ONNX lowering).

bf16 (``dtype=torch.bfloat16``, ``torch-export`` and ``aoti``): weights and activations in bfloat16, the
program still takes and returns float32 (it casts at its boundary), so a runner is used the same way; the
difference from fp32 eager is recorded as for int8. Worth it where the processor's bf16 GEMM is faster than
its fp32 one (AVX512-BF16 or AMX, a recent GPU); slower where bf16 is emulated.

Castling-ViT models (arXiv 2211.10526) are exported in their switched form: the auxiliary softmax branch
is removed first (``switch_to_inference``), which is refused while the branch still has weight.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from tubelet.errors import CheckpointError, ConfigError, TubeletError

FORMATS = ("torch-export", "onnx", "aoti", "executorch")
RUNTIMES = ("eager", "torch-export", "onnxruntime", "aoti", "executorch")
# an AOTInductor package is a .pt2 too (torch's name for both); the inner suffix says which loader opens it
SUFFIX = {"torch-export": ".pt2", "onnx": ".onnx", "aoti": ".aoti.pt2", "executorch": ".pte"}
RUNTIME_OF_FORMAT = {"torch-export": "torch-export", "onnx": "onnxruntime", "aoti": "aoti", "executorch": "executorch"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BF16_FORMATS = ("torch-export", "aoti")  # ONNX Runtime's and XNNPACK's CPU kernels have no bf16 convolutions
MAX_BATCH = 1024
MAX_FRAMES = 512  # in frames: Dim bounds are in units of the frame multiple
# ExecuTorch plans its memory for the largest shape a dynamic dimension allows: smaller bounds there
EXECUTORCH_MAX_BATCH, EXECUTORCH_MAX_FRAMES = 8, 64


@dataclass(frozen=True)
class FramePolicy:
    """Whether a model's frame count may be dynamic in an exported program; ``multiple``: frame counts the
    program accepts are multiples of it (its temporal stride), ``minimum`` the least it accepts."""

    dynamic: bool
    multiple: int = 1
    minimum: int = 1
    reason: str = ""


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and measured."""

    path: str
    fmt: str
    model: str
    inputs: list[dict]
    frames: FramePolicy | None
    int8: bool = False
    dtype: str = "float32"  # of the weights and activations inside the program; its inputs and outputs are fp32
    max_abs_diff: float = float("nan")  # against eager, on the example inputs
    output_scale: float = float("nan")  # max |eager output|
    size_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.output_scale, 1e-12)

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["relative_diff"] = self.relative_diff
        return out


def _config(model: nn.Module) -> Any:
    variant = getattr(model, "variant", None)
    return variant.config if variant is not None else getattr(model, "cfg", None)


def model_name(model: nn.Module) -> str:
    variant = getattr(model, "variant", None)
    return variant.name if variant is not None else type(model).__name__


def example_inputs(model: nn.Module, batch: int = 2, num_frames: int | None = None,
                   size: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the model's own build size (``num_frames`` x ``img_size``\\ :sup:`2` clips, ``(B, C, H, W)`` for
    image models, token ids ``(B, context_length)`` for a text tower, ``(reference, boxes, search)`` for UTT)."""
    from tubelet.models.mvit import MViT
    from tubelet.models.deformable_detr import DeformableDETR
    from tubelet.models.resnet2d import ResNet2d
    from tubelet.models.text import TextTransformer
    from tubelet.models.utt import UTT

    g = torch.Generator().manual_seed(seed)
    cfg = _config(model)
    if isinstance(model, TextTransformer):
        return (torch.randint(1, cfg.vocab_size, (batch, cfg.context_length), generator=g),)
    if isinstance(model, UTT):
        s = size or 128
        lo = torch.rand(batch, 1, 2, generator=g) * s / 2
        boxes = torch.cat([lo, lo + s / 4 + torch.rand(batch, 1, 2, generator=g) * s / 4], -1)
        return (torch.randn(batch, 3, s, s, generator=g), boxes, torch.randn(batch, 3, s, s, generator=g))
    if isinstance(model, (ResNet2d, DeformableDETR)):  # images (B, 3, H, W)
        s = size or 224
        return (torch.randn(batch, 3, s, s, generator=g),)
    s = size or cfg.img_size
    if isinstance(model, MViT) and not cfg.video:
        return (torch.randn(batch, cfg.in_chans, s, s, generator=g),)
    t = num_frames or cfg.num_frames
    return (torch.randn(batch, cfg.in_chans, t, s, s, generator=g),)


def frame_policy(model: nn.Module) -> FramePolicy | None:
    """How an exported program's frame dimension may vary (None: the model takes no clips).

    Convolutional networks (ResNet3d, X3D, SlowFast) pool globally, so any frame count their temporal
    strides divide works. The space-time ViT's learned or sin-cos temporal positions are resampled from
    the token grid in a Python branch, which the graph specialises, so its frames are static. MViT and MeMViT are
    static: their relative-position tables and pooled key/value grids are sized at build time from
    ``num_frames`` (and MeMViT's memory has the build grid's shape)."""
    from tubelet.models.mvit import MViT
    from tubelet.models.deformable_detr import DeformableDETR
    from tubelet.models.resnet2d import ResNet2d
    from tubelet.models.resnet3d import ResNet3d
    from tubelet.models.slowfast import SlowFast
    from tubelet.models.text import TextTransformer
    from tubelet.models.utt import UTT
    from tubelet.models.vit import VisionTransformer
    from tubelet.models.x3d import X3D

    cfg = _config(model)
    if isinstance(model, (TextTransformer, UTT, ResNet2d, DeformableDETR)) or (isinstance(model, MViT) and not cfg.video):
        return None
    if isinstance(model, VisionTransformer):
        if cfg.num_frames == 1 and cfg.tubelet_size == 1:
            return FramePolicy(False, reason="an image ViT takes one frame")
        # traced with a Dim multiple of the tubelet size, the graph still guards T // tubelet == build value
        # and ONNX Runtime then fails in the concatenation of the position table
        return FramePolicy(False, reason="the temporal position table is resampled in a Python branch on the "
                                         "token grid (torch.export guards T // tubelet_size to the build value)")
    if isinstance(model, MViT):
        return FramePolicy(False, reason="relative-position tables and pooled key/value grids are sized from "
                                         "num_frames at build time")
    if isinstance(model, SlowFast):
        return FramePolicy(False, reason="the Slow pathway's frame indices (slow_frame_indices: a linspace over "
                                         "the Fast frames) are computed from the frame count in Python")
    if isinstance(model, (ResNet3d, X3D)):
        stride = 1
        for s in getattr(cfg, "temporal_strides", None) or ():
            stride *= int(s)
        if getattr(cfg, "pool_after_res2", False):
            stride *= 2
        return FramePolicy(True, stride, stride)
    return FramePolicy(False, reason=f"{type(model).__name__} has no frame policy")


def dynamic_shapes(model: nn.Module, inputs: Sequence[torch.Tensor], dynamic_frames: bool | None = None,
                   max_batch: int = MAX_BATCH, max_frames: int = MAX_FRAMES) -> tuple:
    """``torch.export`` dynamic shapes: the batch of every input, and the frames of a clip when the model
    allows it (``dynamic_frames=None``: as :func:`frame_policy` says; False: static)."""
    from torch.export import Dim

    if inputs[0].shape[0] < 2:
        raise ConfigError("export from an example batch of 2 or more: from batch 1 the batch dimension is fixed")
    batch = Dim("batch", min=1, max=max_batch)
    policy = frame_policy(model)
    frames = policy is not None and policy.dynamic if dynamic_frames is None else bool(dynamic_frames)
    if frames and (policy is None or not policy.dynamic):
        raise ConfigError(f"{model_name(model)}: the frame count cannot be dynamic"
                          f"{': ' + policy.reason if policy is not None else ' (the model takes no clips)'}")
    shapes = []
    for i, x in enumerate(inputs):
        spec: dict[int, Any] = {0: batch}
        if frames and i == 0 and x.ndim == 5:
            spec[2] = Dim("t", min=max(policy.minimum // policy.multiple, 1),  # type: ignore[union-attr]
                          max=max_frames // policy.multiple) * policy.multiple  # type: ignore[union-attr]
        shapes.append(spec)
    return tuple(shapes)


def prepare(model: nn.Module) -> nn.Module:
    """The model as it is exported: eval mode, and a castling model switched to its inference form."""
    from tubelet.models.layers.angular_attention import castling_layers, switch_to_inference

    from tubelet.models.memvit import MeMViT

    model = model.eval()
    if isinstance(model, MeMViT) and _config(model).memory:
        raise TubeletError(
            f"{model_name(model)}: cannot export a memory model: its memory (MemoryPoolingAttention._cache, the compressed "
            "keys and values of earlier clips) is Python state that every forward rewrites, and an exported "
            "program is a function of its inputs alone; run it with --runtime eager, or build it with memory=False")
    if any(m.branch for m in castling_layers(model)):
        switch_to_inference(model)  # refused (TubeletError) while the branch still has weight
    return model


class _Outputs(nn.Module):
    """A model whose forward returns a list (UTT's boxes per iteration) or a dict (the detector's logits,
    boxes and per-layer outputs) as a flat tuple of its tensors, in ``_flat``'s order, so every exporter
    sees a flat output. With ``dtype`` (the model's own, bf16), floating inputs are cast to it and floating
    outputs back to float32 inside the graph, so the program's interface stays fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, *args):
        if self.dtype is not None:
            args = tuple(a.to(self.dtype) if a.is_floating_point() else a for a in args)
        out = self.model(*args)
        flat = out if torch.is_tensor(out) else tuple(_flat(out))
        if self.dtype is None:
            return flat
        up = [o.float() if o.is_floating_point() else o for o in ((flat,) if torch.is_tensor(flat) else flat)]
        return up[0] if torch.is_tensor(flat) else tuple(up)


def _flat(out) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [out] if torch.is_tensor(out) else list(tree_leaves(out))


def export_program(model: nn.Module, inputs: Sequence[torch.Tensor], dynamic_frames: bool | None = None,
                   max_batch: int = MAX_BATCH, max_frames: int = MAX_FRAMES, dtype: torch.dtype | None = None):
    """``torch.export.export`` of ``prepare(model)`` at ``inputs`` with :func:`dynamic_shapes`; a graph
    ``torch.export`` cannot capture is an error naming the op (or guard) that blocks it. ``dtype``: the
    model's parameters are in it (bf16) and the program casts at its boundary (:class:`_Outputs`)."""
    model = prepare(model)
    shapes = dynamic_shapes(model, inputs, dynamic_frames, max_batch, max_frames)
    try:
        with torch.no_grad():
            return torch.export.export(_Outputs(model, dtype), tuple(inputs), dynamic_shapes=(shapes,))  # forward(*args)
    except Exception as exc:  # torch raises many types here; the first line names the op or guard
        raise TubeletError(f"{model_name(model)}: torch.export failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    """The line of an exporter's error that names the op (ONNX: its "Exception summary"), else its first lines."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    named = [x for x in lines if "No ONNX function found" in x or "Unsupported" in x]
    text = named[0] if named else " ".join(lines[:2]) or type(exc).__name__
    text = text.replace("<class 'torch.onnx._internal.exporter._errors.DispatchError'>: ", "")
    return text[:400]


def quantize_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantisation of every ``nn.Linear`` through torchao (per-token activation and
    per-channel weight scales); a model with no linear layer is refused."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ConfigError("int8 export needs torchao (pip install 'tubelet[deploy]')") from exc
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{model_name(model)} has no linear layer to quantise")
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def export_model(model: nn.Module, path: str | Path, fmt: str, inputs: Sequence[torch.Tensor] | None = None,
                 dynamic_frames: bool | None = None, quantize: bool = False, check: bool = True,
                 threads: int | None = None, dtype: str = "float32") -> ExportReport:
    """Export ``model`` to ``path`` as ``fmt`` (one of :data:`FORMATS`), from ``inputs`` (default: two
    clips of the model's build size). ``check``: run the artifact in its runtime on ``inputs`` and record
    the largest difference from fp32 eager (``report.max_abs_diff``). ``dtype``: ``float32`` or ``bfloat16``
    (torch-export and aoti; see the module). Writes ``PATH.json`` (see the module)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format '{fmt}': expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    if dtype != "float32" and fmt not in BF16_FORMATS:
        raise ConfigError(f"--dtype {dtype}: {fmt} has no CPU kernels for it here; export --format "
                          f"{' or '.join(BF16_FORMATS)}")
    if dtype != "float32" and quantize:
        raise ConfigError(f"--int8 and --dtype {dtype}: choose one (int8 keeps the rest of the model in fp32)")
    if fmt == "executorch" and threads is not None:
        raise ConfigError("--threads: ExecuTorch sizes its XNNPACK threadpool itself; give no --threads with it")
    path = Path(path)
    if _format_of(path) != fmt:  # the runtime is chosen by the name when the file is loaded
        raise ConfigError(f"{path}: a {fmt} artifact is named *{SUFFIX[fmt]}")
    if fmt == "aoti":
        require_compiler()
    t0 = time.perf_counter()
    model = prepare(model)
    inputs = tuple(inputs) if inputs is not None else example_inputs(model)
    with torch.no_grad():
        reference = _flat(model(*inputs))
    notes: list[str] = []
    cast = DTYPES[dtype] if dtype != "float32" else None
    if quantize and fmt != "onnx" or cast is not None:
        import copy

        model = copy.deepcopy(model)  # the caller's model stays as it is
        if cast is not None:
            model = model.to(cast)
            notes.append(f"{dtype}: weights and activations; inputs and outputs float32 (cast inside the program)")
        else:
            model = quantize_int8(model)
            notes.append("int8: torchao Int8DynamicActivationInt8WeightConfig on every nn.Linear")
    policy = frame_policy(model)
    limits = (EXECUTORCH_MAX_BATCH, EXECUTORCH_MAX_FRAMES) if fmt == "executorch" else (MAX_BATCH, MAX_FRAMES)
    program = export_program(model, inputs, dynamic_frames, *limits, dtype=cast)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torch-export":
        torch.export.save(program, str(path))
    elif fmt == "aoti":
        _save_aoti(program, path, model_name(model))
    elif fmt == "onnx":
        _save_onnx(program, inputs, path, model_name(model))
        if quantize:
            _quantize_onnx(path)
            notes.append("int8: onnxruntime.quantization.quantize_dynamic on MatMul/Gemm (QInt8 weights, "
                         "per-channel)")
    else:
        _save_executorch(program, path, model_name(model))
    frames = policy
    specs = [{"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."),
              "dynamic": {"0": "batch", **({"2": f"frames (multiple of {frames.multiple})"}
                                          if i == 0 and x.ndim == 5 and frames is not None and frames.dynamic
                                          and dynamic_frames is not False else {})}}
             for i, x in enumerate(inputs)]
    for spec in specs:
        spec["max"] = {"0": limits[0], **({"2": limits[1]} if "2" in spec["dynamic"] else {})}
    if frames is not None and dynamic_frames is False:
        frames = dataclasses.replace(frames, dynamic=False, reason="exported static on request")
    report = ExportReport(str(path), fmt, model_name(model), specs, frames, int8=quantize, dtype=dtype, notes=notes)
    report.output_scale = max(float(r.abs().max()) for r in reference)
    _write_meta(path, report, model)
    if check:
        try:
            runner = load_runtime(path, RUNTIME_OF_FORMAT[fmt], threads=threads)
        except CheckpointError as exc:
            if fmt != "executorch":
                raise
            raise TubeletError(f"{model_name(model)}: the XNNPACK delegate could not compile the lowered graph when "
                               f"ExecuTorch loaded it ({exc}; the runtime's log names the tensor)") from exc
        got = runner.run_all(*inputs)
        if len(got) != len(reference):
            raise TubeletError(f"{path}: the exported program returns {len(got)} outputs, eager {len(reference)}")
        report.max_abs_diff = max(float((g.float() - r.float()).abs().max()) for g, r in zip(got, reference))
    report.size_bytes = path.stat().st_size
    report.seconds = time.perf_counter() - t0
    _write_meta(path, report, model)
    return report


def _save_onnx(program, inputs: Sequence[torch.Tensor], path: Path, name: str) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError("--format onnx needs onnx, onnxscript and onnxruntime (pip install 'tubelet[deploy]')") from exc
    names = [f"input{i}" if i else "input" for i in range(len(inputs))]
    try:
        onnx_program = torch.onnx.export(program, tuple(inputs), input_names=names, dynamo=True,
                                         external_data=False, verbose=False, report=False)
    except Exception as exc:
        raise TubeletError(f"{name}: ONNX export failed: {_first_line(exc)}") from exc
    onnx_program.save(str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise TubeletError(f"{path}: onnx.checker rejected the exported graph: {_first_line(exc)}") from exc


def _format_of(path: Path) -> str | None:
    """The format a file's name says (``*.aoti.pt2`` before ``*.pt2``)."""
    for fmt in sorted(SUFFIX, key=lambda f: -len(SUFFIX[f])):
        if path.name.endswith(SUFFIX[fmt]) and len(path.name) > len(SUFFIX[fmt]):
            return fmt
    return None


def require_compiler() -> str:
    """The C++ compiler AOTInductor will call (``$CXX``, else g++ or clang++); a one-line error without one."""
    import os
    import shutil

    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    raise ConfigError("--format aoti compiles C++: no compiler found (install g++ or clang++, or set CXX); "
                      "the package it makes then runs without one")


def _save_aoti(program, path: Path, name: str) -> None:
    from torch._inductor import aoti_compile_and_package

    # freezing: parameters become constants, so Inductor folds batch norms into convolutions, prepacks
    # weights for oneDNN and fuses the pointwise ops around them (X3D-S: 2.4x eager at batch 1 here)
    try:
        with torch.no_grad():
            aoti_compile_and_package(program, package_path=str(path), inductor_configs={"freezing": True})
    except Exception as exc:
        raise TubeletError(f"{name}: AOTInductor compilation failed: {_first_line(exc)}") from exc


def _quantize_onnx(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".fp32.onnx")
    path.rename(tmp)
    try:
        quantize_dynamic(str(tmp), str(path), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         weight_type=QuantType.QInt8)
    finally:
        tmp.unlink(missing_ok=True)


def executorch_available() -> str | None:
    """None when ExecuTorch (with its XNNPACK backend) imports; else why not, in one line."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401
    except Exception as exc:  # ImportError, or a binary built for another torch
        return (f"ExecuTorch is not usable here ({_first_line(exc)}); pip install executorch (a release built for "
                f"torch {torch.__version__.split('+')[0]})")
    return None


def _save_executorch(program, path: Path, name: str) -> None:
    why = executorch_available()
    if why is not None:
        raise ConfigError(f"--format executorch: {why}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    blocked = _executorch_blockers(program.graph_module)  # before lowering, which takes long
    if blocked:
        raise TubeletError(f"{name}: cannot run in ExecuTorch: {blocked}")
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    except Exception as exc:
        raise TubeletError(f"{name}: ExecuTorch lowering failed: {_first_line(exc)}") from exc
    path.write_bytes(edge.to_executorch().buffer)


def _executorch_blockers(gm) -> str:
    """The first op left outside the XNNPACK delegate that ExecuTorch's portable kernels cannot run."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or not any(k in str(node.target) for k in ("convolution", "conv3d")):
            continue
        val = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
        if val is not None and val.dim() == 5:
            op = str(node.target).rsplit(".", 1)[0]
            return (f"op {op} on a 5-D input {tuple(val.shape)} (node {node.name}): XNNPACK delegates "
                    "2-D convolutions only and the portable convolution kernel takes 3-D or 4-D input")
    return ""


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_meta(path: Path, report: ExportReport, model: nn.Module) -> None:
    cfg = _config(model)
    meta = {"tubelet_export": 1, **report.as_dict(),
            "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
            "num_classes": getattr(cfg, "num_classes", None), "torch": torch.__version__}
    _meta_path(path).write_text(json.dumps(meta, indent=1, default=str))


def read_meta(path: str | Path) -> dict | None:
    """The ``PATH.json`` an export wrote beside ``path`` (None when there is none)."""
    meta = _meta_path(Path(path))
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{meta}: not valid JSON ({exc})") from exc


class Runner:
    """An exported program as a callable: ``runner(x)`` is the first output (the logits), ``run_all``
    every output. ``meta`` is what the export recorded (None for a file without ``PATH.json``)."""

    def __init__(self, path: str, runtime: str, fn: Callable[..., list[torch.Tensor]], meta: dict | None,
                 threads: int | None = None) -> None:
        self.path, self.runtime, self._fn, self.meta, self.threads = path, runtime, fn, meta, threads

    def check(self, inputs: Sequence[torch.Tensor]) -> None:
        """A one-line ``ConfigError`` for inputs whose static dimensions differ from the exported ones."""
        if not self.meta:
            return
        specs = self.meta.get("inputs") or []
        if len(inputs) != len(specs):
            raise ConfigError(f"{self.path}: exported for {len(specs)} inputs, got {len(inputs)}")
        for i, (x, spec) in enumerate(zip(inputs, specs)):
            shape, dyn = spec["shape"], spec.get("dynamic", {})
            ok = len(shape) == x.ndim and all(str(d) in dyn or shape[d] == x.shape[d] for d in range(x.ndim))
            frames = dyn.get("2", "")
            ok = ok and all(x.shape[int(d)] <= int(m) for d, m in spec.get("max", {}).items() if int(d) < x.ndim)
            if ok and "multiple of" in frames:
                ok = x.shape[2] % int(frames.rsplit(" ", 1)[-1].rstrip(")")) == 0
            if not ok:
                want = ["B" if str(d) in dyn and d == 0 else ("T" if str(d) in dyn else str(s))
                        for d, s in enumerate(shape)]
                multiple = f" with T a {frames.split('(')[-1].rstrip(')')}" if frames else ""
                bounds = ", ".join(f"{'B' if d == '0' else 'T'} <= {m}" for d, m in spec.get("max", {}).items())
                raise ConfigError(f"{self.path}: input {i} has shape {tuple(x.shape)} but the program was exported "
                                  f"for ({', '.join(want)}){multiple}{f' ({bounds})' if bounds else ''}")

    def run_all(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        self.check(inputs)
        return self._fn(*inputs)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.run_all(*inputs)[0]


def load_runtime(path: str | Path, runtime: str, threads: int | None = None) -> Runner:
    """A runner for ``path`` in ``runtime`` (one of :data:`RUNTIMES`): ``eager`` loads a weights file or
    run folder (``tubelet.engine.load.load_model``), ``torch-export`` a ``.pt2``, ``onnxruntime`` an
    ``.onnx`` (``intra_op_num_threads=threads``), ``aoti`` an ``.aoti.pt2``, ``executorch`` a ``.pte``.
    ``threads`` sets the intra-op threads of that runtime (torch's for eager, torch-export and aoti)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime '{runtime}': expected one of {', '.join(RUNTIMES)}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    fmt = {v: k for k, v in RUNTIME_OF_FORMAT.items()}.get(runtime)
    if fmt is not None and _format_of(path) != fmt:
        raise ConfigError(f"{path}: --runtime {runtime} runs *{SUFFIX[fmt]} files (tubelet export --format {fmt})")
    meta = read_meta(path) if runtime != "eager" else None
    if runtime in ("eager", "torch-export", "aoti") and threads is not None:
        torch.set_num_threads(int(threads))
    if runtime == "eager":
        from tubelet.engine.load import load_model

        model = load_model(path).eval()

        def eager(*xs: torch.Tensor) -> list[torch.Tensor]:
            with torch.inference_mode():
                return _flat(model(*xs))

        return Runner(str(path), runtime, eager, None, torch.get_num_threads())
    if runtime in ("torch-export", "aoti"):
        from torch._inductor import aoti_load_package

        # both load as a callable on torch tensors: the ExportedProgram's module, or AOTInductor's library
        load, what = ((lambda p: torch.export.load(p).module(), "a torch.export program") if runtime == "torch-export"
                      else (aoti_load_package, "an AOTInductor package for this torch"))
        try:
            module = load(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not {what} ({_first_line(exc)})") from exc

        def torch_run(*xs: torch.Tensor) -> list[torch.Tensor]:
            with torch.no_grad():
                return _flat(module(*xs))

        return Runner(str(path), runtime, torch_run, meta, torch.get_num_threads())
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigError("--runtime onnxruntime needs onnxruntime (pip install 'tubelet[deploy]')") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads is not None else torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: constant-folding notes are not the user's concern
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({_first_line(exc)})") from exc
        names = [i.name for i in session.get_inputs()]

        def onnx_run(*xs: torch.Tensor) -> list[torch.Tensor]:
            feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, xs)}
            return [torch.from_numpy(o) for o in session.run(None, feeds)]

        return Runner(str(path), runtime, onnx_run, meta, opts.intra_op_num_threads)
    why = executorch_available()
    if why is not None:
        raise ConfigError(f"--runtime executorch: {why}")
    if threads is not None:
        raise ConfigError("--runtime executorch: --threads is not supported (its XNNPACK threadpool is sized by "
                          "the runtime itself)")
    from executorch.runtime import Runtime

    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as exc:
        raise CheckpointError(f"{path}: ExecuTorch cannot load it ({_first_line(exc)})") from exc

    def et_run(*xs: torch.Tensor) -> list[torch.Tensor]:
        return [o.clone() for o in method.execute([x.contiguous() for x in xs])]

    return Runner(str(path), runtime, et_run, meta)
