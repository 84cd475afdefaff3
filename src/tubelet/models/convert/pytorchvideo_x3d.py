"""PyTorchVideo X3D names -> tubelet ``models/x3d.py`` names (``tubelet convert --from pytorchvideo``).

PyTorchVideo's ``create_x3d`` is a ``Net`` of six blocks: ``blocks.0`` the stem (``conv.conv_t`` is
its 1x3x3 spatial conv and ``conv.conv_xy`` the depthwise 5x1x1 temporal one, in that order; ``norm``),
``blocks.1-4`` the stages (``res_blocks.j.branch1_conv/branch1_norm`` the shortcut,
``branch2.{conv_a, norm_a, conv_b, norm_b.0, norm_b.1.block.0/2, conv_c, norm_c}`` the bottleneck
with the squeeze-excitation inside ``norm_b``), ``blocks.5`` the head (``pool.pre_conv/pre_norm``:
conv5, ``pool.post_conv``: the 2048-wide projection, a 1x1x1 conv that tubelet holds as a Linear;
``proj``: the classifier). The zoo's ``.pyth`` files wrap the state dict as ``{"model_state": ...}``.

The mobile-CPU zoo's ``EfficientX3d`` (``pytorchvideo.models.accelerator.mobile_cpu.efficient_x3d``,
hub ``efficient_x3d_xs`` / ``efficient_x3d_s``, files ``*_original_form.pyth``, a bare state dict)
has the same network under PySlowFast-style stage names: ``s1.pathway0_stem_conv_xy`` (1x3x3) and
``s1.pathway0_stem_conv`` (5x1x1, BN), stages ``s2``-``s5`` of ``pathway0_res{j}`` blocks with
``_res_proj`` the shortcut (always normalised: tubelet's ``norm_shortcut_always``) and
``layers.{conv_0, conv_1, se.se.block.{0,2}, conv_2}`` the bottleneck, each conv a ``kernel.conv`` /
``kernel.bn`` pair; the head ``head.conv_5``, ``head.lin_5`` (1x1x1 conv) and ``projection.model``.
Its deployable form (after ``convert()``: BN folded into the convs, SE as Linears) is another
function of other tensors and is not read.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from tubelet.errors import CheckpointError

EXAMPLE_KEYS = ("blocks.0.conv.conv_t.weight", "blocks.1.res_blocks.0.branch2.conv_a.weight", "blocks.5.proj.weight")
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^blocks\.0\.conv\.conv_t\.weight$"), "stem.0.weight"),
    (re.compile(r"^blocks\.0\.conv\.conv_xy\.weight$"), "stem.1.weight"),
    (re.compile(rf"^blocks\.0\.norm\.{_BN}$"), r"stem.2.\1"),
    (re.compile(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch1_conv\.weight$"), r"stages.S\1.\2.shortcut.weight"),
    (re.compile(rf"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch1_norm\.{_BN}$"), r"stages.S\1.\2.shortcut_bn.\3"),
    (re.compile(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.conv_([abc])\.weight$"), r"stages.S\1.\2.conv_\3.weight"),
    (re.compile(rf"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_([ac])\.{_BN}$"), r"stages.S\1.\2.bn_\3.\4"),
    (re.compile(rf"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_b\.0\.{_BN}$"), r"stages.S\1.\2.bn_b.\3"),
    (re.compile(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_b\.1\.block\.0\.(weight|bias)$"),
     r"stages.S\1.\2.se.fc1.\3"),
    (re.compile(r"^blocks\.([1-4])\.res_blocks\.(\d+)\.branch2\.norm_b\.1\.block\.2\.(weight|bias)$"),
     r"stages.S\1.\2.se.fc2.\3"),
    (re.compile(r"^blocks\.5\.pool\.pre_conv\.weight$"), "conv5.weight"),
    (re.compile(rf"^blocks\.5\.pool\.pre_norm\.{_BN}$"), r"bn5.\1"),
    (re.compile(r"^blocks\.5\.pool\.post_conv\.weight$"), "lin5.weight"),
    (re.compile(r"^blocks\.5\.proj\.(weight|bias)$"), r"head.fc.\1"),
    # EfficientX3d (original form); its stage s is tubelet's stages.s-2
    (re.compile(r"^s1\.pathway0_stem_conv_xy\.kernel\.conv\.weight$"), "stem.0.weight"),
    (re.compile(r"^s1\.pathway0_stem_conv\.kernel\.conv\.weight$"), "stem.1.weight"),
    (re.compile(rf"^s1\.pathway0_stem_conv\.kernel\.bn\.{_BN}$"), r"stem.2.\1"),
    (re.compile(r"^s([2-5])\.pathway0_res(\d+)\._res_proj\.kernel\.conv\.weight$"), r"stages.E\1.\2.shortcut.weight"),
    (re.compile(rf"^s([2-5])\.pathway0_res(\d+)\._res_proj\.kernel\.bn\.{_BN}$"), r"stages.E\1.\2.shortcut_bn.\3"),
    (re.compile(r"^s([2-5])\.pathway0_res(\d+)\.layers\.conv_0\.kernel\.conv\.weight$"), r"stages.E\1.\2.conv_a.weight"),
    (re.compile(r"^s([2-5])\.pathway0_res(\d+)\.layers\.conv_1\.kernel\.conv\.weight$"), r"stages.E\1.\2.conv_b.weight"),
    (re.compile(r"^s([2-5])\.pathway0_res(\d+)\.layers\.conv_2\.kernel\.conv\.weight$"), r"stages.E\1.\2.conv_c.weight"),
    (re.compile(rf"^s([2-5])\.pathway0_res(\d+)\.layers\.conv_0\.kernel\.bn\.{_BN}$"), r"stages.E\1.\2.bn_a.\3"),
    (re.compile(rf"^s([2-5])\.pathway0_res(\d+)\.layers\.conv_1\.kernel\.bn\.{_BN}$"), r"stages.E\1.\2.bn_b.\3"),
    (re.compile(rf"^s([2-5])\.pathway0_res(\d+)\.layers\.conv_2\.kernel\.bn\.{_BN}$"), r"stages.E\1.\2.bn_c.\3"),
    (re.compile(r"^s([2-5])\.pathway0_res(\d+)\.layers\.se\.se\.block\.0\.(weight|bias)$"), r"stages.E\1.\2.se.fc1.\3"),
    (re.compile(r"^s([2-5])\.pathway0_res(\d+)\.layers\.se\.se\.block\.2\.(weight|bias)$"), r"stages.E\1.\2.se.fc2.\3"),
    (re.compile(r"^head\.conv_5\.kernel\.conv\.weight$"), "conv5.weight"),
    (re.compile(rf"^head\.conv_5\.kernel\.bn\.{_BN}$"), r"bn5.\1"),
    (re.compile(r"^head\.lin_5\.kernel\.conv\.weight$"), "lin5.weight"),
    (re.compile(r"^projection\.model\.(weight|bias)$"), r"head.fc.\1"),
]


def rename(key: str) -> str | None:
    """The tubelet name of a PyTorchVideo X3D key, or ``None`` when it has none."""
    for pattern, repl in _RULES:
        if pattern.match(key):
            new = pattern.sub(repl, key)
            # PyTorchVideo counts the stem as block 0 (its stage s+1 is tubelet's stages.s), EfficientX3d
            # as s1 (its s+2 is stages.s).
            new = re.sub(r"stages\.S(\d)", lambda m: f"stages.{int(m.group(1)) - 1}", new)
            return re.sub(r"stages\.E(\d)", lambda m: f"stages.{int(m.group(1)) - 2}", new)
    return None


def adapt(name: str, value: torch.Tensor) -> torch.Tensor:
    """The 1x1x1 projection conv ``(2048, 432, 1, 1, 1)`` becomes the Linear weight ``(2048, 432)``."""
    if name == "lin5.weight" and value.ndim == 5:
        return value.flatten(1)
    return value


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """``x3d_l`` for 25 blocks in stage 4, else ``x3d_m`` (XS, S and M share every weight; pass --model
    for the input size a checkpoint was trained at). Raw PyTorchVideo ``create_x3d`` names."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.3\.res_blocks\.(\d+)\.", k))}
    if not blocks:
        raise KeyError("it has no blocks.3.res_blocks.N.* keys")
    return "x3d_l" if max(blocks) + 1 == 25 else "x3d_m"


def convert_state_dict(
    state: dict[str, torch.Tensor], model: str | None = None, overrides: dict[str, Any] | None = None,
    origin: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """Rename an X3D ``state`` and check every tensor against ``create_model(model, **overrides)`` built
    on the meta device (``convert.convert_state_dict`` with ``source="pytorchvideo"``): missing,
    unexpected and mis-shaped keys are all listed, each by name, in one error. Returns the state in the
    model's key order, the model name and the overrides used."""
    from tubelet.models.convert import convert_state_dict as convert_any

    if not any(rename(k) for k in state):
        found = ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")
        raise CheckpointError(f"{origin}: no PyTorchVideo X3D key among its {len(state)} tensors (found {found}); "
                              f"expected keys such as {', '.join(EXAMPLE_KEYS)} (is --from right?)")
    result = convert_any(state, "pytorchvideo", model, overrides, origin=origin)
    return result.state, result.model, result.overrides
