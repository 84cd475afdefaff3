"""Linear-angular attention of Castling-ViT (You et al., "Castling-ViT: Compressing Self-Attention via
Switching Towards Linear-Angular Attention at Vision Transformer Inference", arXiv 2211.10526, CVPR 2023).

**Kernel** (docs/castling.md Eq. 1-2). With ``q^ = q/|q|``, ``k^ = k/|k|`` and ``x = q^ . k^`` the angular
similarity is ``sim(x) = 1 - arccos(x)/pi = 1/2 + arcsin(x)/pi``; its Taylor expansion is
``1/2 + (x + sum_{n>=1} c_n x^(2n+1))/pi`` with ``c_n = (2n)! / (4^n (n!)^2 (2n+1))`` = 1/6, 3/40, 5/112.
Keeping the constant and the linear term makes attention linear in the number of tokens N:

    y = rownorm(1/2 V + (1/pi) Q^ (K^^T V) [+ w (M * A) V])  +  DWConv(V)

``K^^T V`` is ``d x d`` per head, so the cost is O(N d^2), never O(N^2 d). The depthwise conv on V and
the training-only masked softmax branch (``A = softmax(q k^T / sqrt(d))`` on the raw q, k, ``M = A >
threshold``, Eq. 3) stand in for the dropped higher-order terms. The branch has a weight ``w`` that a
schedule drives to 0 (``tubelet.methods.castling``); ``switch_to_inference`` then removes it.

Decisions (METHODS.md section 8):

- **Constant term: 1/2 V**, as the released module; the exact kernel's constant would be 1/2 sum_j v_j.
- **Epsilon in the normalisations.** The release divides by the plain norms: a zero q, k or output row
  gives NaN. Here ``|.|`` is ``max(|.|, eps)`` (``F.normalize``), so a zero vector stays zero.
- **DWConv.** ``"token"`` (default): the release's depthwise (k, 1) conv along the token axis, one
  kernel per head shared over head_dim, no bias. ``"grid"``: a depthwise 3-D conv over the (T, H, W)
  token grid, one kernel per head, for video where raster order puts vertical and temporal neighbours
  far apart. ``"none"``: no conv. Prefix (CLS) tokens are excluded from the conv in every mode (the
  conv assumes a grid or raster order): their conv term is zero.
- **Constants.** 1/2 and 1/pi are constants, not parameters. The branch restores O(N^2) memory while
  its weight is not zero.

The MViTv2 form (:class:`CastlingPoolingAttention`) keeps pooled K/V, decomposed relative positions
and residual pooling; see its docstring.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tubelet.errors import CheckpointError, ConfigError, TubeletError
from tubelet.models.layers.pool_attention import Grid, PoolingAttention
from tubelet.models.layers.rel_pos import decomposed_rel_pos, rel_pos_bias, rel_pos_onehot

__all__ = [
    "AttentionChoice",
    "CastlingPoolingAttention",
    "LinearAngularAttention",
    "ValueConv",
    "angular_similarity",
    "arcsin_taylor_coefficients",
    "castling_layers",
    "linear_angular",
    "set_branch_weight",
    "switch_to_inference",
    "truncated_angular_similarity",
]

ATTENTIONS = ("softmax", "castling")
DWCONVS = ("token", "grid", "none")
INV_PI = 1.0 / math.pi


# ----------------------------------------------------------------------------------------- kernel maths
def arcsin_taylor_coefficients(n: int) -> list[float]:
    """``c_1 .. c_n`` of ``arcsin(x) = x + sum c_k x^(2k+1)``: ``(2k)! / (4^k (k!)^2 (2k+1))``."""
    return [math.factorial(2 * k) / (4**k * math.factorial(k) ** 2 * (2 * k + 1)) for k in range(1, n + 1)]


def angular_similarity(x: torch.Tensor) -> torch.Tensor:
    """``1 - arccos(x)/pi = 1/2 + arcsin(x)/pi`` for cosine similarities ``x`` in [-1, 1]."""
    return 0.5 + torch.asin(x) * INV_PI


def truncated_angular_similarity(x: torch.Tensor, order: int = 0) -> torch.Tensor:
    """The kernel's Taylor expansion kept up to ``x^(2 order + 1)``: order 0 is the linear form."""
    series = x.clone()
    for k, c in enumerate(arcsin_taylor_coefficients(order), start=1):
        series = series + c * x ** (2 * k + 1)
    return 0.5 + series * INV_PI


def linear_angular(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(1/pi) q^ (k^^T v)`` per head, ``(B, h, Nq, d), (B, h, Nk, d), (B, h, Nk, d) -> (B, h, Nq, d)``.

    Equal to ``(1/pi) (q^ k^^T) v`` by associativity, in O(N d^2) time and O(d^2) extra memory."""
    qn = F.normalize(q, dim=-1, eps=eps)
    kn = F.normalize(k, dim=-1, eps=eps)
    return (qn @ (kn.transpose(-2, -1) @ v)) * INV_PI


def masked_softmax(
    q: torch.Tensor, k: torch.Tensor, scale: float, threshold: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The auxiliary branch's ``M * A``: ``A = softmax(q k^T scale + bias)`` with the entries at or below
    ``threshold`` set to zero (the mask is a step: gradients flow through the kept entries only)."""
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    attn = attn.softmax(dim=-1)
    return attn * (attn > threshold).to(attn.dtype)


# ------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class AttentionChoice:
    """The model config fields that choose a backbone's attention (mixed into ``ViTConfig`` and
    ``MViTConfig``). ``castling_*`` fields apply with ``attention="castling"`` only."""

    attention: Literal["softmax", "castling"] = "softmax"
    # True: the auxiliary masked softmax branch exists (the training form; its weight is set at run time,
    # 1 at build). False: the inference form, as ``switch_to_inference`` leaves it (and saves it).
    castling_branch: bool = True
    castling_threshold: float = 0.02  # branch mask: softmax entries above it are kept (the release's 0.02)
    castling_dwconv: Literal["token", "grid", "none"] = "token"
    castling_dwconv_kernel: int = 9  # "token": (k, 1) along the token axis, as the release
    castling_grid_kernel: tuple[int, int, int] = (3, 3, 3)  # "grid": (kt, kh, kw)
    castling_eps: float = 1e-6  # floor of the norms of q, k and the output rows (the release has none)


def check_attention_choice(cfg: AttentionChoice) -> None:
    """One-line ``ConfigError`` for a value the attention fields cannot take."""
    if cfg.attention not in ATTENTIONS:
        raise ConfigError(f"model option attention='{cfg.attention}' is not one of {', '.join(ATTENTIONS)}")
    if cfg.castling_dwconv not in DWCONVS:
        raise ConfigError(f"model option castling_dwconv='{cfg.castling_dwconv}' is not one of {', '.join(DWCONVS)}")
    if cfg.castling_dwconv_kernel < 1 or cfg.castling_dwconv_kernel % 2 == 0:
        raise ConfigError(f"model option castling_dwconv_kernel={cfg.castling_dwconv_kernel} must be a positive odd "
                          "number (the conv keeps the token count)")
    gk = tuple(cfg.castling_grid_kernel)
    if len(gk) != 3 or any(int(k) < 1 or int(k) % 2 == 0 for k in gk):
        raise ConfigError(f"model option castling_grid_kernel={list(gk)} must be three positive odd sizes (kt, kh, kw)")
    if not 0.0 <= cfg.castling_threshold < 1.0:
        raise ConfigError(f"model option castling_threshold={cfg.castling_threshold} must be in [0, 1)")
    if not cfg.castling_eps > 0.0:
        raise ConfigError(f"model option castling_eps={cfg.castling_eps} must be > 0 (a zero norm would give NaN)")


def castling_options(cfg: AttentionChoice) -> dict:
    """The keyword arguments of the castling layers, from a model config."""
    return dict(branch=cfg.castling_branch, threshold=cfg.castling_threshold, dwconv=cfg.castling_dwconv,
                dwconv_kernel=cfg.castling_dwconv_kernel, grid_kernel=tuple(int(k) for k in cfg.castling_grid_kernel),
                eps=cfg.castling_eps)


def attention_layer(cfg: AttentionChoice, softmax: Callable[..., nn.Module], castling: Callable[..., nn.Module]
                    ) -> Callable[..., nn.Module]:
    """The attention class a model passes to all its blocks (timm's layer injection), chosen once."""
    check_attention_choice(cfg)
    return softmax if cfg.attention == "softmax" else partial(castling, **castling_options(cfg))


# ----------------------------------------------------------------------------------- the value conv
class ValueConv(nn.Module):
    """Depthwise conv on V, one kernel per head shared over head_dim, no bias; prefix tokens get 0.

    ``(B, h, P + T*H*W, d) -> (B, h, P + T*H*W, d)``; ``mode`` is ``"token"`` (a (k, 1) conv along
    the token axis, the release's) or ``"grid"`` (a (kt, kh, kw) conv over the token grid)."""

    def __init__(self, num_heads: int, mode: str, kernel: int = 9, grid_kernel: Grid = (3, 3, 3)) -> None:
        super().__init__()
        self.mode = mode
        if mode == "token":
            self.conv: nn.Module = nn.Conv2d(num_heads, num_heads, (kernel, 1), padding=(kernel // 2, 0),
                                             groups=num_heads, bias=False)
        elif mode == "grid":
            self.conv = nn.Conv3d(num_heads, num_heads, grid_kernel, padding=[k // 2 for k in grid_kernel],
                                  groups=num_heads, bias=False)
        else:
            raise ValueError(f"ValueConv mode must be 'token' or 'grid', got '{mode}'")

    def forward(self, v: torch.Tensor, grid: Grid) -> torch.Tensor:
        B, h, N, d = v.shape
        T, H, W = grid
        p = N - T * H * W
        patch = v[:, :, p:]
        if self.mode == "token":
            out = self.conv(patch)
        else:
            # (B, h, T*H*W, d) -> (B*d, h, T, H, W): head_dim rides in the batch so the kernel is shared by it
            x = patch.reshape(B, h, T, H, W, d).permute(0, 5, 1, 2, 3, 4).reshape(B * d, h, T, H, W)
            out = self.conv(x).reshape(B, d, h, T * H * W).permute(0, 2, 3, 1)
        return F.pad(out, (0, 0, p, 0)) if p else out


def prefix_count(n_tokens: int, grid: Grid | None, where: str) -> int:
    """Prefix tokens in front of a ``grid`` of patch tokens; a token count that is not ``P + T*H*W``
    (e.g. MAE's sparse encoder: a subset of the tokens) is refused, since the conv needs the full grid."""
    if grid is None:
        raise ValueError(f"{where}: castling attention's value conv needs the token grid (pass grid=(T, H, W))")
    p = n_tokens - math.prod(grid)
    if not 0 <= p <= 8:
        raise ValueError(f"{where}: {n_tokens} tokens do not form a {tuple(grid)} token grid plus prefix tokens; "
                         "castling attention needs every token of the grid (no token subsets, e.g. keep_idx)")
    return p


class _BranchState:
    """What every castling layer shares: the branch's weight, its L1 statistic, the switch.

    The weight is a buffer (``branch_weight``), so every weights file and training checkpoint says
    where the schedule was and a model loaded from one runs as it was saved; a Python float mirror
    (``current_weight``) keeps the forward free of device synchronisation."""

    branch: bool
    current_weight: float
    threshold: float
    kept_mass: torch.Tensor | None

    def _init_branch(self, branch: bool, threshold: float) -> None:
        self.branch = bool(branch)
        self.current_weight = 1.0 if branch else 0.0
        self.threshold = float(threshold)
        self.kept_mass = None  # mean over rows of the kept softmax mass, from the last forward (L1 penalty)
        self.register_buffer("branch_weight", torch.tensor(self.current_weight))  # type: ignore[attr-defined]
        self.register_load_state_dict_post_hook(_BranchState._after_load)  # type: ignore[attr-defined]

    @staticmethod
    def _after_load(module: "_BranchState", incompatible: object) -> None:
        weight = float(module.branch_weight)  # type: ignore[attr-defined]
        if weight != 0.0 and not module.branch:
            raise CheckpointError(f"the weights hold castling branch weight {weight:g}, but this model has no branch "
                                  "(castling_branch=False): build it with castling_branch=True")
        module.current_weight = weight

    def _branch_active(self) -> bool:
        return self.branch and self.current_weight != 0.0

    def set_branch_weight(self, weight: float) -> None:
        if weight < 0:
            raise ValueError(f"castling branch weight must be >= 0, got {weight}")
        if weight > 0 and not self.branch:
            raise TubeletError(f"cannot set castling branch weight {weight:g}: the branch was removed "
                               "(switch_to_inference, or castling_branch=False)")
        self.current_weight = float(weight)
        with torch.no_grad():
            self.branch_weight.fill_(weight)  # type: ignore[attr-defined]

    def switch_to_inference(self) -> None:
        if self.branch and self.current_weight != 0.0:
            raise TubeletError(f"cannot switch castling attention to inference: the auxiliary softmax branch "
                               f"still has weight {self.current_weight:g}; train until its schedule reaches 0")
        self.branch = False
        self.set_branch_weight(0.0)
        self.kept_mass = None


# --------------------------------------------------------------------------------------- ViT form
class LinearAngularAttention(nn.Module, _BranchState):
    """Castling attention for the ViT blocks: ``(B, N, D) -> (B, N, D)``, the signature of
    :class:`tubelet.models.layers.Attention` plus the castling options, and ``grid`` in ``forward``.

    ``fused_attn`` and ``attn_drop`` act on the branch only (the linear form has no attention matrix)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        fused_attn: bool = True,
        *,
        branch: bool = True,
        threshold: float = 0.02,
        dwconv: str = "token",
        dwconv_kernel: int = 9,
        grid_kernel: Grid = (3, 3, 3),
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.eps = float(eps)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.value_conv = ValueConv(num_heads, dwconv, dwconv_kernel, grid_kernel) if dwconv != "none" else None
        self._init_branch(branch, threshold)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        query_idx: torch.Tensor | None = None,
        grid: Grid | None = None,
    ) -> torch.Tensor:
        """``grid``: the (T, H, W) grid of the patch tokens (prefix tokens first), for the value conv."""
        if attn_mask is not None or query_idx is not None:
            raise ValueError("castling attention takes neither attn_mask nor query_idx (the linear form has no "
                             "attention matrix to mask); use attention='softmax' for masked or query-subset blocks")
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = 0.5 * v + linear_angular(q, k, v, self.eps)
        self.kept_mass = None
        if self._branch_active():
            a = self.attn_drop(masked_softmax(q, k, self.scale, self.threshold))
            y = y + self.current_weight * (a @ v)
            self.kept_mass = a.sum(-1).mean()
        y = F.normalize(y, dim=-1, eps=self.eps)  # replaces softmax's row normalisation
        if self.value_conv is not None:
            prefix_count(N, grid, "LinearAngularAttention")
            y = y + self.value_conv(v, tuple(grid))  # type: ignore[arg-type]
        y = y.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(y))


# ------------------------------------------------------------------------------------- MViTv2 form
class CastlingPoolingAttention(PoolingAttention, _BranchState):
    """Castling attention with MViTv2's pooling (arXiv 2112.01526, Sec. 3): ``(B, N, dim) -> (B, Nq, dim_out)``.

    Q, K, V are projected and pooled as in :class:`PoolingAttention` (same parameters, so softmax
    weights load). Then, per head, with ``q^``, ``k^`` the normalised pooled queries and keys:

    - **Relative positions** enter the kernel as a key offset: ``x_ij = q^_i . (k^_j + R_ij)`` with
      MViTv2's decomposed ``R_ij = R_t[dt] + R_h[dh] + R_w[dw]`` (patch keys only). The linear form of
      the extra term is ``rel_i . (onehot^T V)``, with ``onehot`` the one-hot code of each key's
      (t, h, w) coordinates: O(N (d + Tk + Hk + Wk) d), like the key term.
    - **Per-token terms.** K/V pooling leaves V on a coarser grid than the queries, so 1/2 V and the
      value conv use each query's own value *before* pooling (``X W_V`` at the query's position: the
      centre of its pooling window); the pooled V enters only the sums over keys.
    - ``y = rownorm(1/2 V_q + (1/pi) [q^ (k^^T V) + rel (onehot^T V)] [+ w (M * A) V]) + DWConv(V)_q``,
      the branch ``A`` being MViTv2's own softmax attention (raw pooled q, k and the relative bias).
    - **Residual pooling** adds the pooled Q to the patch tokens, then heads merge and project, as in
      the softmax form.
    """

    def __init__(self, *args, branch: bool = True, threshold: float = 0.02, dwconv: str = "token",
                 dwconv_kernel: int = 9, grid_kernel: Grid = (3, 3, 3), eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = float(eps)
        self.value_conv = ValueConv(self.num_heads, dwconv, dwconv_kernel, grid_kernel) if dwconv != "none" else None
        self._init_branch(branch, threshold)

    def _at_queries(self, t: torch.Tensor, grid: Grid, q_grid: Grid) -> torch.Tensor:
        """``t`` on the input grid ``(B, h, P + N, d)`` taken at the query positions (the pooling windows'
        centres: every ``q_stride``-th token), ``-> (B, h, P + Nq, d)``."""
        if tuple(self.q_stride) == (1, 1, 1) or self.pool_q is None:
            return t
        p = self.num_prefix
        B, h, _, d = t.shape
        T, H, W = grid
        patch = t[:, :, p:].reshape(B, h, T, H, W, d)
        st, sh, sw = self.q_stride
        patch = patch[:, :, ::st, ::sh, ::sw]
        if tuple(patch.shape[2:5]) != tuple(q_grid):
            raise ValueError(f"castling: query grid {tuple(q_grid)} is not every {self.q_stride} token of {tuple(grid)} "
                             "(an even pooling kernel); use odd pool_kernel sizes")
        return torch.cat((t[:, :, :p], patch.reshape(B, h, -1, d)), dim=2)

    def forward(self, x: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, Grid]:
        B, N, _ = x.shape
        n, d, p = self.num_heads, self.head_dim, self.num_prefix
        q, k, v_in = self.qkv(x).reshape(B, N, 3, n, d).permute(2, 0, 3, 1, 4).unbind(0)
        q, q_grid = self._pool(q, self.pool_q, self.norm_q, grid)
        k, k_grid = self._pool(k, self.pool_k, self.norm_k, grid)
        v, _ = self._pool(v_in, self.pool_v, self.norm_v, grid)

        qn = F.normalize(q, dim=-1, eps=self.eps)
        kn = F.normalize(k, dim=-1, eps=self.eps)
        y = 0.5 * self._at_queries(v_in, grid, q_grid) + (qn @ (kn.transpose(-2, -1) @ v)) * INV_PI
        rel_on = self.rel_pos_spatial or self.rel_pos_temporal
        if rel_on:
            tables = (self.rel_pos_t if self.rel_pos_temporal else None,
                      self.rel_pos_h if self.rel_pos_spatial else None,
                      self.rel_pos_w if self.rel_pos_spatial else None)
            rel = [r for r in decomposed_rel_pos(qn[:, :, p:], q_grid, k_grid, *tables) if r is not None]
            code = rel_pos_onehot(k_grid, self.rel_pos_temporal, q.device, q.dtype, spatial=self.rel_pos_spatial)
            code_v = code.transpose(0, 1) @ v[:, :, p:]  # (B, n, e, d): sums of V per key coordinate
            y_rel = (torch.cat(rel, dim=-1) @ code_v) * INV_PI  # (B, n, Nq - p, d)
            y = y + F.pad(y_rel, (0, 0, p, 0))
        self.kept_mass = None
        if self._branch_active():
            bias = None
            if rel_on:
                raw = decomposed_rel_pos(q[:, :, p:], q_grid, k_grid, *tables)
                bias = rel_pos_bias(*raw, k_grid, p)
            a = masked_softmax(q, k, self.scale, self.threshold, bias)
            y = y + self.current_weight * (a @ v)
            self.kept_mass = a.sum(-1).mean()
        y = F.normalize(y, dim=-1, eps=self.eps)
        if self.value_conv is not None:
            y = y + self._at_queries(self.value_conv(v_in, grid), grid, q_grid)
        return self._output(y, q), q_grid


# ---------------------------------------------------------------------------------- model-level helpers
CASTLING_LAYERS = (LinearAngularAttention, CastlingPoolingAttention)


def castling_layers(model: nn.Module) -> list[nn.Module]:
    """Every castling attention layer of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, CASTLING_LAYERS)]


def set_branch_weight(model: nn.Module, weight: float) -> None:
    """Set the auxiliary branch's weight in every castling layer of ``model``."""
    for m in castling_layers(model):
        m.set_branch_weight(weight)


def branch_kept_mass(model: nn.Module) -> torch.Tensor | None:
    """Mean over the castling layers of the kept softmax mass of their last forward (None without branch)."""
    values = [m.kept_mass for m in castling_layers(model) if m.kept_mass is not None]
    return torch.stack(values).mean() if values else None


def switch_to_inference(model: nn.Module) -> None:
    """Remove the auxiliary branch of every castling layer; refused (one line, with the weight) while a
    layer's branch weight is not zero. The model's config (and its registry variant, which the weights
    files record) becomes ``castling_branch=False``, so a saved model is rebuilt in the inference form."""
    import dataclasses

    layers = castling_layers(model)
    if not layers:
        raise TubeletError(f"{type(model).__name__} has no castling attention to switch (attention='softmax')")
    weights = sorted({m.current_weight for m in layers if m.branch})
    if any(w != 0.0 for w in weights):
        raise TubeletError(f"cannot switch castling attention to inference: the auxiliary softmax branch still has "
                           f"weight {max(weights):g}; train until its schedule reaches 0")
    for m in layers:
        m.switch_to_inference()
    cfg = getattr(model, "cfg", None)
    if dataclasses.is_dataclass(cfg) and hasattr(cfg, "castling_branch"):
        model.cfg = dataclasses.replace(cfg, castling_branch=False)
    variant = getattr(model, "variant", None)
    if variant is not None and hasattr(variant.config, "castling_branch"):
        model.variant = dataclasses.replace(variant, config=dataclasses.replace(variant.config, castling_branch=False))


def castling_only_keys(model: nn.Module) -> list[str]:
    """The tensors castling adds to a softmax model of the same family: its value convs and branch weights."""
    keys = []
    for name, m in model.named_modules():
        if isinstance(m, CASTLING_LAYERS):
            keys.append(f"{name}.branch_weight")
            if m.value_conv is not None:
                keys.append(f"{name}.value_conv.conv.weight")
    return keys


def refuse_castling_into_softmax(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """A castling checkpoint's value convs have no place in a softmax model: loading the rest would give a
    different (wrong) model, so it is a ``CheckpointError`` rather than ignored tensors."""
    extra = [k for k in state if k.endswith((".attn.value_conv.conv.weight", ".attn.branch_weight"))]
    if extra and not castling_layers(model):
        raise CheckpointError(f"the checkpoint has castling attention ({extra[0]}, ...) but the model has softmax "
                              "attention; build it with attention='castling'")
