"""MViTv1 (Fan et al., *Multiscale Vision Transformers*, arXiv 2104.11227) checkpoints of PyTorchVideo,
PySlowFast and torchvision -> ``mvitv1_b_16x4`` / ``mvitv1_b_32x3`` (``models/mvit.py`` with the v1
switches). The three share one network; only names and a few shapes differ:

=======================  ======================================  =====================  ==========================
tubelet                  PyTorchVideo (``mvit_base_*``)          PySlowFast (``MViT``)  torchvision (``mvit_v1_b``)
=======================  ======================================  =====================  ==========================
``patch_embed.proj``     ``patch_embed.patch_model``             same                   ``conv_proj``
``cls_token``            ``cls_positional_encoding.cls_token``   same                   ``pos_encoding.class_token``
``pos_embed_spatial``    ``cls_positional_encoding.`` + name     same                   ``pos_encoding.spatial_pos``
``pos_embed_temporal``   ``cls_positional_encoding.`` + name     same                   ``pos_encoding.temporal_pos``
``pos_embed_class``      ``cls_positional_encoding.`` + name     same                   ``pos_encoding.class_pos``
``blocks.i.attn.qkv``    ``blocks.i.attn.{q,k,v}``               ``qkv``, ``{q,k,v}``    ``qkv``
``norm``                 ``norm_embed``                          same                   same
``head``                 ``head.proj``                           ``head.projection``    ``head.1``
=======================  ======================================  =====================  ==========================

Tubelet's tables are ``(1, H'W', D)``, ``(1, T', D)`` and ``(1, 1, D)`` (CLS token and position);
torchvision drops the leading ones (``(H'W', D)``, ``(T', D)``, ``(D,)``), which are restored.
Separate q/k/v projections are concatenated row-wise (q, then k, then v) into the fused ``qkv``,
which computes the same three products. Block-level names (``norm1``, ``attn.proj``,
``attn.pool_{q,k,v}``, ``attn.norm_{q,k,v}``, ``norm2``, ``mlp.fc1/fc2``, ``proj``) are tubelet's
in PyTorchVideo and PySlowFast; torchvision's are renamed in ``convert/torchvision.py``.

One setting is not in the tensors: the eps of the LayerNorms after the Q/K/V pooling convs.
PySlowFast's code of the MViTv1 release (2021) built them as ``nn.LayerNorm`` (eps 1e-5) while its
other norms use 1e-6, and PyTorchVideo's port keeps that; since its MViTv2 release (June 2022)
PySlowFast passes the 1e-6 norm into attention. The released MViTv1 checkpoints were trained with
1e-5, so the PyTorchVideo and PySlowFast imports set ``attn_norm_eps=1e-5`` (a PySlowFast import says
so in its notes; ``--set attn_norm_eps=null`` gives current PySlowFast's function). torchvision's
``mvit_v1_b`` runs at 1e-6 and its import keeps that.

Not importable, and refused by the shape or key checks: PySlowFast's joint ``pos_embed`` (configs
with ``SEP_POS_EMBED: False``) and ``conv_unshared`` pooling. ``POOL_FIRST: True`` checkpoints
(pooling before the projections) have the same keys and shapes as MViTv1-B's but compute another
function; no released MViTv1-B config sets it.
"""

from __future__ import annotations

import re

import torch

_QKV = re.compile(r"^blocks\.(\d+)\.attn\.([qkv])\.(weight|bias)$")
# Tubelet names of an MViT (v1 and v2) below the head.
MVIT_NAMES = re.compile(
    r"^(patch_embed\.proj\.(weight|bias)|cls_token|pos_embed_(spatial|temporal|class)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|proj)\.(weight|bias)"
    r"|blocks\.\d+\.attn\.(qkv|proj)\.(weight|bias)"
    r"|blocks\.\d+\.attn\.pool_[qkv]\.weight|blocks\.\d+\.attn\.norm_[qkv]\.(weight|bias)"
    r"|blocks\.\d+\.attn\.rel_pos_[thw]"
    r"|blocks\.\d+\.mlp\.fc[12]\.(weight|bias))$"
)
_PTV_PREFIXES = (("patch_embed.patch_model.", "patch_embed.proj."), ("cls_positional_encoding.", ""),
                 ("norm_embed.", "norm."), ("head.proj.", "head."))
PYSLOWFAST_V1_EPS_NOTE = ("MViTv1: attn_norm_eps (the pooling LayerNorms) defaults to 1e-5, as in PySlowFast's code "
                          "of the MViTv1 release that trained its checkpoints; PySlowFast since 2022 runs them at "
                          "1e-6 (--set attn_norm_eps=null)")
PTV_EXAMPLE_KEYS = ("patch_embed.patch_model.weight", "cls_positional_encoding.pos_embed_spatial")


def fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.i.attn.{q,k,v}.{weight,bias}`` -> ``blocks.i.attn.qkv.*`` (rows q, k, v); other keys
    unchanged. An incomplete triple is a ``KeyError`` naming the missing keys."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _QKV.match(key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[key] = value
    for (block, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            missing = ", ".join(f"blocks.{block}.attn.{p}.{kind}" for p in "qkv" if p not in qkv)
            raise KeyError(f"q/k/v come in threes: {missing} missing")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def has_separate_qkv(state: dict[str, torch.Tensor]) -> bool:
    return any(_QKV.match(k) for k in state)


def is_ptv_mvit(state: dict[str, torch.Tensor]) -> bool:
    """PyTorchVideo's MViT: its patch embedding or position module."""
    return any(k.startswith(("patch_embed.patch_model.", "cls_positional_encoding.")) for k in state)


def ptv_rename_all(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every PyTorchVideo MViT key under its tubelet name, q/k/v fused; keys with no counterpart keep
    their own name (then reported as unexpected)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in _PTV_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return fuse_qkv(out)


def is_v1(state: dict[str, torch.Tensor]) -> bool:
    """Tubelet-named tensors of an MViT with separable absolute positions (v1)."""
    return "pos_embed_spatial" in state or "pos_embed_temporal" in state


def registry_name(depth: int, width: int, temporal_rows: int) -> str:
    """MViTv1-B by depth 16, width 96 and the temporal position rows (8: 16x4, 16: 32x3)."""
    if (depth, width) != (16, 96):
        raise KeyError(f"no registered MViTv1 has depth {depth} and width {width} (MViTv1-B: 16, 96)")
    table = {8: "mvitv1_b_16x4", 16: "mvitv1_b_32x3"}
    if temporal_rows not in table:
        raise KeyError(f"{temporal_rows} temporal position rows: MViTv1-B has 8 (16x4) or 16 (32x3)")
    return table[temporal_rows]


def infer_model(state: dict[str, torch.Tensor]) -> str:
    """Registry name from tubelet-named v1 tensors."""
    blocks = [int(k.split(".")[1]) for k in state if re.match(r"^blocks\.\d+\.", k)]
    if not blocks or "patch_embed.proj.weight" not in state or "pos_embed_temporal" not in state:
        raise KeyError("it has no blocks.N.*, patch_embed.proj.weight or pos_embed_temporal keys")
    return registry_name(1 + max(blocks), int(state["patch_embed.proj.weight"].shape[0]),
                         int(state["pos_embed_temporal"].shape[1]))
