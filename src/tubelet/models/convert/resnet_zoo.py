"""PyTorchVideo and PySlowFast names of the ResNet family (Slow, C2D, I3D, R(2+1)D, CSN, SlowFast) ->
tubelet names (``models/resnet3d.py``, ``models/slowfast.py``).

PyTorchVideo (``pytorchvideo.models.net.Net``) numbers its top-level ``blocks``: the stem, the four
stages (``res_blocks.b.branch1_conv|branch1_norm|branch2.{conv,norm}_{a,b,c}``), for C2D/I3D a
parameter-free temporal pool after res2 (so the stage indices skip one), and the head ``proj``. Its
SlowFast wraps each level in ``multipathway_blocks.{0: slow, 1: fast}`` with a ``multipathway_fusion``
(``conv_fast_to_slow``, ``norm``). R(2+1)D's conv_b is ``conv_b.{conv_t, norm, conv_xy}``.

PySlowFast names stages ``s1`` (``pathway{p}_stem.{conv,bn}``) to ``s5`` (``pathway{p}_res{b}.branch1``,
``branch1_bn``, ``branch2.{a,a_bn,b,b_bn,c,c_bn}``), laterals ``s{k}_fuse.{conv_f2s,bn}``, the head
``head.projection``.
"""

from __future__ import annotations

import re

import torch

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_PTV_BRANCH = {"branch1_conv": "shortcut.0", "branch1_norm": "shortcut.1", "branch2.conv_a": "conv_a",
               "branch2.norm_a": "bn_a", "branch2.conv_b.conv_t": "conv_b.conv_t", "branch2.conv_b.norm": "conv_b.bn_t",
               "branch2.conv_b.conv_xy": "conv_b.conv_xy", "branch2.conv_b": "conv_b", "branch2.norm_b": "bn_b",
               "branch2.conv_c": "conv_c", "branch2.norm_c": "bn_c"}
_PTV_BLOCK = re.compile(r"^res_blocks\.(\d+)\.(branch1_conv|branch1_norm|branch2\.conv_b\.conv_t|branch2\.conv_b\.norm"
                        r"|branch2\.conv_b\.conv_xy|branch2\.(?:conv|norm)_[abc])\.(\w+)$")
_SF_BRANCH = {"branch1": "shortcut.0", "branch1_bn": "shortcut.1", "branch2.a": "conv_a", "branch2.a_bn": "bn_a",
              "branch2.b": "conv_b", "branch2.b_bn": "bn_b", "branch2.c": "conv_c", "branch2.c_bn": "bn_c"}
_SF_RES = re.compile(r"^s([2-5])\.pathway([01])_res(\d+)\.(branch1|branch1_bn|branch2\.[abc](?:_bn)?)\.(\w+)$")
_SF_STEM = re.compile(r"^s1\.pathway([01])_stem\.(conv|bn)\.(\w+)$")
_SF_FUSE = re.compile(r"^s([1-4])_fuse\.(conv_f2s|bn)\.(\w+)$")

PTV_EXAMPLE_KEYS = ("blocks.0.conv.weight", "blocks.1.res_blocks.0.branch2.conv_a.weight", "blocks.5.proj.weight")
PYSLOWFAST_EXAMPLE_KEYS = ("s1.pathway0_stem.conv.weight", "s2.pathway0_res0.branch2.a.weight", "head.projection.weight")


def is_ptv_resnet(state: dict[str, torch.Tensor]) -> bool:
    return any(".res_blocks." in k for k in state)


def is_pyslowfast_resnet(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("s1.pathway0_stem.") for k in state)


def _stem(pathway: str | None, part: str, leaf: str) -> str:
    prefix = "stem" if pathway is None else f"{pathway}_stem"
    return f"{prefix}.{0 if part in ('conv', 'conv_f2s') else 1}.{leaf}"


def ptv_rename_all(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every PyTorchVideo key under its tubelet name; keys with no counterpart keep their own name
    (they are then reported as unexpected)."""
    two = any(".multipathway_blocks." in k for k in state)
    stage_blocks = sorted({int(k.split(".")[1]) for k in state if ".res_blocks." in k})
    stage_of = {b: s for s, b in enumerate(stage_blocks)}
    head_block = max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        out[_ptv_name(key, two, stage_of, head_block) or key] = value
    return out


def _ptv_name(key: str, two: bool, stage_of: dict[int, int], head_block: int) -> str | None:
    m = re.match(r"^blocks\.(\d+)\.(.+)$", key)
    if not m:
        return None
    i, rest = int(m.group(1)), m.group(2)
    if i == head_block and re.match(r"^proj\.(weight|bias)$", rest):
        return "head.fc." + rest.split(".")[1]
    if two:
        f = re.match(rf"^multipathway_fusion\.(conv_fast_to_slow|norm)\.{_BN}$", rest)
        if f:
            return f"fusions.{i}.{'conv' if f.group(1) == 'conv_fast_to_slow' else 'bn'}.{f.group(2)}"
        p = re.match(r"^multipathway_blocks\.([01])\.(.+)$", rest)
        if not p:
            return None
        pathway, rest = ("slow", "fast")[int(p.group(1))], p.group(2)
    else:
        pathway = None
    if i == 0:
        s = re.match(rf"^(conv|norm)\.{_BN}$", rest)
        return _stem(pathway, s.group(1), s.group(2)) if s else None
    b = _PTV_BLOCK.match(rest)
    if not b or i not in stage_of:
        return None
    stages = "stages" if pathway is None else f"{pathway}_stages"
    return f"{stages}.{stage_of[i]}.{b.group(1)}.{_PTV_BRANCH[b.group(2)]}.{b.group(3)}"


def pyslowfast_rename(key: str, two: bool) -> str | None:
    """The tubelet name of a PySlowFast ResNet / SlowFast key, or ``None``."""
    if re.match(r"^head\.projection\.(weight|bias)$", key):
        return "head.fc." + key.rsplit(".", 1)[1]
    m = _SF_STEM.match(key)
    if m:
        return _stem(("slow", "fast")[int(m.group(1))] if two else None, m.group(2), m.group(3))
    m = _SF_FUSE.match(key)
    if m:
        return f"fusions.{int(m.group(1)) - 1}.{'conv' if m.group(2) == 'conv_f2s' else 'bn'}.{m.group(3)}"
    m = _SF_RES.match(key)
    if m:
        s, p, b, part, leaf = int(m.group(1)) - 2, int(m.group(2)), m.group(3), m.group(4), m.group(5)
        if p == 1 and not two:
            return None
        stages = ("slow_stages", "fast_stages")[p] if two else "stages"
        return f"{stages}.{s}.{b}.{_SF_BRANCH[part]}.{leaf}"
    return None


_DEPTH = {6: 50, 23: 101, 36: 152}


def infer_model(renamed: dict[str, torch.Tensor]) -> str:
    """Registry name from tubelet-named tensors: pathways, res4 depth, conv_b form, stem kernel, the
    lateral kernel (SlowFast R-50: 7 is 8x8, 5 is 4x16, PySlowFast's and PyTorchVideo's settings)."""
    two = "slow_stem.0.weight" in renamed
    prefix = "slow_stages" if two else "stages"
    res4 = {int(k.split(".")[2]) for k in renamed if k.startswith(f"{prefix}.2.")}
    if not res4:
        raise KeyError(f"it has no res4 blocks ({prefix}.2.*)")
    depth = _DEPTH.get(1 + max(res4))
    if depth is None:
        raise KeyError(f"res4 has {1 + max(res4)} blocks, not 6, 23 or 36 (ResNet-50/101/152)")
    if two:
        kernel = int(renamed["fusions.0.conv.weight"].shape[2])
        if depth == 50:
            return "slowfast_r50_8x8" if kernel == 7 else "slowfast_r50_4x16"
        if depth == 101:
            return "slowfast_r101_8x8"
        raise KeyError(f"no registered SlowFast has depth {depth}")
    if "stages.0.0.conv_b.conv_t.weight" in renamed:
        return "r2plus1d_r50"
    conv_b = renamed.get("stages.0.0.conv_b.weight")
    if conv_b is not None and conv_b.shape[1] == 1:
        return {101: "csn_r101", 152: "csn_r152"}.get(depth, "csn_r101")
    stem_t = int(renamed["stem.0.weight"].shape[2])
    if stem_t == 5:
        return "i3d_r50"
    a_t = int(renamed["stages.3.0.conv_a.weight"].shape[2]) if "stages.3.0.conv_a.weight" in renamed else 3
    return "c2d_r50" if a_t == 1 else "slow_r50"
