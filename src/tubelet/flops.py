"""FLOP counting on ``torch.utils.flop_counter``, reported as GMACs (the papers' "GFLOPs").

Every "GFLOPs" figure in the video papers tubelet follows counts one multiply-add as one FLOP
(fvcore). ``torch.utils.flop_counter`` counts two (a multiply and an add), so ``macs = flops / 2``.
Only matmul-like ops (mm, bmm, addmm, convolution, attention) are counted, as in fvcore.

By default the count is the paper's: attention that has several exact formulations (MViTv2's
pooling attention, ``models/layers/pool_attention.py``) is counted in the one whose multiply-adds
the papers report, whatever the device would pick. ``executed=True`` counts what the model's own
setting runs instead (on CPU MViT's ``"concat"`` form, with its extra relative-position columns).

On CPU, ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward), which torch 2.13 has no
formula for: counted as 0, every attention FLOP would silently disappear. Importing this module
registers formulas for both, reusing torch's own SDPA formulas for the other backends.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from tubelet.models.layers.pool_attention import paper_formulation

__all__ = ["FlopCount", "SavedBytes", "count_flops", "register_cpu_sdpa_formulas", "saved_for_backward"]

_aten = torch.ops.aten


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # Two batched matmuls: scores = q k^T and out = scores v, each 2*B*H*Lq*Lk*d FLOPs.
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    # Flash backward recomputes the scores, then four matmuls for dV, dP, dQ, dK: 5 in all,
    # the same convention torch uses for its GPU flash/efficient/cuDNN kernels.
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def register_cpu_sdpa_formulas() -> None:
    """Register FLOP formulas for the CPU flash-attention ops; idempotent, and a no-op where torch
    already provides them (or the ops do not exist)."""
    pairs = (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop),
    )
    for name, formula in pairs:
        op = getattr(_aten, name, None)
        if op is None or op in flop_counter.flop_registry:
            continue
        flop_counter.register_flop_formula(op)(formula)


register_cpu_sdpa_formulas()


@dataclass
class FlopCount:
    """Result of :func:`count_flops`.

    ``macs``: multiply-adds (= torch flop_counter FLOPs / 2), the unit the papers call "GFLOPs".
    ``by_op``: MACs per aten op (e.g. ``"addmm"``, ``"convolution"``, ``"_scaled_dot_product_..."``).
    ``by_module``: MACs per module, by qualified name (``"Global"`` is the total).
    """

    params: int
    macs: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        """torch's convention: 2 FLOPs per multiply-add."""
        return 2 * self.macs

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def __str__(self) -> str:
        return f"params {self.params / 1e6:.2f}M, {self.gmacs:.2f} GMACs (1 multiply-add = 1)"


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)  # e.g. a method's batch dict


def _scalar(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().sum()  # sum's backward is an expand: adds no counted FLOPs
    if isinstance(out, dict) and "loss" in out:
        return out["loss"]
    if isinstance(out, (tuple, list)):
        return sum(_scalar(o) for o in out if isinstance(o, (torch.Tensor, dict)))  # type: ignore[return-value]
    raise TypeError(f"cannot take a backward pass through a model output of type {type(out).__name__}")


def count_flops(model: nn.Module, inputs: Any, backward: bool = False, executed: bool = False) -> FlopCount:
    """Count the multiply-adds of one call ``model(inputs)`` (and its backward if ``backward``).

    ``inputs``: a tensor (``model(x)``), a tuple/list (``model(*inputs)``) or anything else passed as
    one argument (a method's batch dict). With ``backward`` the output (its ``"loss"`` if it is a
    dict, else the sum of the output) is back-propagated inside the counter. The model's train/eval
    mode is left as is. Works on the meta device, which costs no compute: build the model under
    ``with torch.device("meta")`` and pass meta inputs. ``executed``: count the attention formulation
    the model is set to run rather than the paper's (see the module docstring).
    """
    params = sum(p.numel() for p in model.parameters())
    saved_grads = [(p, p.grad) for p in model.parameters()] if backward else []
    for p, _ in saved_grads:  # backward would accumulate into existing gradients in place
        p.grad = None
    mode = FlopCounterMode(display=False)
    formulation = contextlib.nullcontext() if executed else paper_formulation(model)
    with formulation, mode:
        if backward:
            _scalar(_call(model, inputs)).backward()
        else:
            with torch.no_grad():
                _call(model, inputs)
    for p, grad in saved_grads:  # counting must not leave gradients behind
        p.grad = grad
    by_op: dict[str, int] = defaultdict(int)
    by_module: dict[str, int] = {}
    for module_name, ops in mode.get_flop_counts().items():
        if module_name == "Global":
            for op, flops in ops.items():
                by_op[op.__name__.split(".")[0]] += flops // 2
        by_module[module_name] = sum(ops.values()) // 2
    return FlopCount(params=params, macs=mode.get_total_flops() // 2, by_op=dict(by_op), by_module=by_module)


@dataclass
class SavedBytes:
    """The bytes autograd keeps for the backward pass of one call, each storage counted once.

    ``activations`` excludes the storages of the model's parameters, which autograd saves too (a
    Linear keeps its weight for its input's gradient) but which are in memory whatever the step
    does; counted with the activations they would hide what removing tokens saves (FLIP B/16 at
    batch 8: 470.7 MB of parameters beside 968 MB of activations). ``by_part``: the activations
    split by the named submodules whose forward saved them (the innermost one), the rest under "other".
    """

    activations: int
    parameters: int
    by_part: dict[str, int] = field(default_factory=dict)


def saved_for_backward(model: nn.Module, inputs: Any, parts: Mapping[str, nn.Module] | None = None) -> SavedBytes:
    """Count what ``model(inputs)`` saves for backward (``torch.autograd.graph.saved_tensors_hooks``),
    then run the backward (of its ``"loss"``, or the sum of its output) and leave the parameters'
    gradients as they were. A count of bytes does not depend on machine load, unlike a time."""
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stack = ["other"]

    def leave(module: nn.Module, args: Any, output: Any) -> None:  # a hook that returns a value replaces the output
        stack.pop()

    handles = []
    for name, part in (parts or {}).items():
        handles.append(part.register_forward_pre_hook(lambda m, a, name=name: stack.append(name) or None))
        handles.append(part.register_forward_hook(leave))
    seen: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen.setdefault(storage.data_ptr(), (storage.nbytes(), stack[-1]))
        return t

    kept_grads = [(p, p.grad) for p in model.parameters()]
    for p, _ in kept_grads:
        p.grad = None
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = _scalar(_call(model, inputs))
        loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p, grad in kept_grads:
            p.grad = grad
    by_part: dict[str, int] = defaultdict(int)
    parameters = 0
    for ptr, (nbytes, part) in seen.items():
        if ptr in param_storages:
            parameters += nbytes
        else:
            by_part[part] += nbytes
    return SavedBytes(activations=sum(by_part.values()), parameters=parameters, by_part=dict(by_part))
