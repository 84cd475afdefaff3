"""rho-SSL: rho-SimCLR, rho-MoCo, rho-BYOL and rho-SwAV (Feichtenhofer et al., "A Large-Scale Study on
Unsupervised Spatiotemporal Representation Learning", arXiv 2104.14558, Sec. 3), one structure for all.

Every framework has a *source* encoder (backbone -> projector [-> predictor], with gradients) and a
*target* encoder that produces the keys: a momentum (EMA) copy of backbone + projector (MoCo, BYOL) or
the source encoder itself (SimCLR, SwAV). A batch holds ``V`` views per video (``(B, V, C, T, H, W)``,
data/rho.py): rho clips with independent start times, or two views of one clip for rho = 1. Each
view is the query in turn and the other V - 1 views of its video are its positives; the loss is the
mean of the per-query losses (METHODS.md Sec. 4 "Gradient scale": averaged, so the gradient does not
grow with rho, unlike the reference code). With q, k L2-normalised and sim(q, k) = q.k:

* SimCLR (Eq. 1, multi-positive InfoNCE): ``L_q = -log sum_{k+} e^{sim/a} / sum_{k in K+ u K-} e^{sim/a}``;
  negatives are all views of the other videos in the *global* batch, gathered across processes with
  gradients (``torch.distributed.nn.functional.all_gather``); the query's own view is excluded.
* MoCo: the same InfoNCE with keys from the momentum encoder and negatives from a FIFO queue of 65,536
  keys; the step's keys are enqueued *after* the loss, so a step never uses its own keys as negatives.
* BYOL: ``L_q = mean_{k+} (2 - 2 sim(q, k+))`` = ``||q/|q| - k/|k|||^2`` with q from the predictor and k
  from the momentum target (no gradient). (The paper writes ``-sum sim``; same minimiser, mean over
  positives keeps the scale independent of rho.)
* SwAV: scores against L2-normalised, bias-free prototypes; codes = Sinkhorn-Knopp (eps 0.05, 3
  iterations, over the global batch, per view) of the target scores, without gradient; ``L_q =
  mean_{k+} CE(code(k+), softmax(score(q) / a))``; prototypes frozen for the first epoch.

Momentum (Sec. 3 / A): ``m_k = 1 - (1 - m0) (cos(pi k / K) + 1) / 2`` per step k of K, applied to
parameters only (the target's BN buffers follow its own forward passes), at the start of each
training forward (as MoCo's ``_momentum_update_key_encoder``). Heads (METHODS.md Sec. 4.5): MoCo 3-layer
MLP 2048 wide without BN, out 128; SimCLR and SwAV the same with BN; BYOL projector 2048 -> 4096 -> 256
and predictor 256 -> 4096 -> 256 with BN; [Linear (no bias before BN), BN, ReLU] then a final Linear.
MoCo with AsymBN takes asym-siam's MoCo v2 projector instead (arXiv 2204.00613, Sec. 5 baseline):
Linear, BN, ReLU, Linear, ReLU, Linear (``proj_bn: first``), since AsymBN acts on the projector's BN
and rho-MoCo's has none.

Asymmetric designs (arXiv 2204.00613; methods/asym.py): MultiCrop (``batch["small"]``), ScaleMix
(``batch["mix"]``), AsymAug (``batch["target"]``) come from the data (``data.rho``), AsymBN and MeanEnc
from ``method.asym_bn`` / ``method.mean_enc``.

Any registry backbone works: the encoder uses its pooled pre-logits feature,
``forward_head(forward_features(x), pre_logits=True)`` (2048-d for Slow R-50).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tubelet.config.bounds import NONNEGATIVE, POSITIVE, POSITIVE_REAL, PROBABILITY_BELOW_ONE, bounded
from tubelet.config.registry import MethodConfig
from tubelet.config.schema import Recipe
from tubelet.core.batch import Batch
from tubelet.errors import ConfigError
from tubelet.methods.backbone import build_backbone
from tubelet.methods.base import RunContext
from tubelet.methods.registry import register_method
from tubelet.core.dist import all_gather_no_grad, all_gather_with_grad, rank, world_size
from tubelet.methods.asym import (
    mean_of_others, multicrop_weights, project_views, scalemix, sync_batchnorm, target_projector,
)

FRAMEWORKS = ("simclr", "moco", "byol", "swav")


@dataclass
class ContrastiveConfig(MethodConfig):
    """The ``method`` section of rho-SSL with the asymmetric designs of arXiv 2204.00613 (methods/asym.py).
    ``None`` fields take the framework's paper value (``FRAMEWORK_DEFAULTS``)."""

    name: str = "contrastive"
    framework: Literal["simclr", "moco", "byol", "swav"] = "byol"
    temperature: float | None = bounded(None, POSITIVE_REAL)  # 0.1 (simclr, moco, swav)
    proj_dim: int | None = bounded(None, POSITIVE)  # moco/simclr/swav 128, byol 256
    proj_hidden: int | None = bounded(None, POSITIVE)  # 2048 (byol 4096)
    proj_layers: int | None = bounded(None, POSITIVE)  # 3 (byol 2)
    proj_bn: bool | Literal["first"] | None = None  # all but moco; "first": BN after the first Linear only
    pred_hidden: int | None = bounded(None, NONNEGATIVE)  # byol 4096; 0 with pred_layers 0
    pred_layers: int | None = bounded(None, NONNEGATIVE)  # byol 2, others 0 (no predictor)
    # m0: moco 0.994, byol 0.996 (cosine to 1); simclr/swav share the encoder. 1 would freeze the target.
    momentum: float | None = bounded(None, PROBABILITY_BELOW_ONE)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    queue_size: int = bounded(65536, POSITIVE)  # moco
    num_prototypes: int = bounded(1000, POSITIVE)  # swav
    sinkhorn_iters: int = bounded(3, POSITIVE)
    sinkhorn_eps: float = bounded(0.05, POSITIVE_REAL)
    freeze_prototypes_steps: int | None = bounded(None, NONNEGATIVE)  # swav; None = one epoch (the run's steps per epoch)
    steps_per_epoch: int | None = bounded(None, POSITIVE)  # None: the run's (from the training set's size)
    total_steps: int | None = bounded(None, POSITIVE)  # momentum schedule length; None = the run's total steps
    asym_bn: bool = False  # AsymBN: target projector BN over all views (and SyncBN across processes) only
    mean_enc: bool = False  # MeanEnc: target = mean of the other clips' embeddings, then normalised
    knn_every_n_steps: int | None = bounded(None, NONNEGATIVE)  # kNN monitor (eval/knn.py); None = off, 0 = at the end only
    knn_k: int = bounded(20, POSITIVE)
    knn_temperature: float = bounded(0.07, POSITIVE_REAL)
    knn_max_train: int = bounded(2048, POSITIVE)  # memory-bank videos (first N of the train split)

# Paper values (METHODS.md Sec. 4; REFERENCE_NUMBERS.md Sec. E) filled in for ``None`` config fields.
FRAMEWORK_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": dict(temperature=0.1, proj_dim=128, proj_hidden=2048, proj_layers=3, proj_bn=True,
                   pred_hidden=0, pred_layers=0, momentum=None),
    "moco": dict(temperature=0.1, proj_dim=128, proj_hidden=2048, proj_layers=3, proj_bn=False,
                 pred_hidden=0, pred_layers=0, momentum=0.994),
    "byol": dict(temperature=0.1, proj_dim=256, proj_hidden=4096, proj_layers=2, proj_bn=True,
                 pred_hidden=4096, pred_layers=2, momentum=0.996),
    "swav": dict(temperature=0.1, proj_dim=128, proj_hidden=2048, proj_layers=3, proj_bn=True,
                 pred_hidden=0, pred_layers=0, momentum=None),
}


def resolve_config(cfg: ContrastiveConfig) -> ContrastiveConfig:
    """``cfg`` with every ``None`` head/temperature/momentum field set to the framework's paper value."""
    if cfg.framework not in FRAMEWORKS:
        raise ConfigError(f"method.framework must be one of {', '.join(FRAMEWORKS)}, got '{cfg.framework}'")
    d = dict(FRAMEWORK_DEFAULTS[cfg.framework])
    if cfg.asym_bn and cfg.framework == "moco":
        d["proj_bn"] = "first"  # asym-siam's MoCo v2 projector: AsymBN needs a BN to synchronise
    return dataclasses.replace(cfg, **{k: v for k, v in d.items() if getattr(cfg, k) is None})


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


class MLPHead(nn.Module):
    """``layers`` Linear layers: [Linear (no bias when BN follows), BN, ReLU] x (layers - 1), Linear.
    ``bn``: BN in every hidden block (True), in none (False), or only in the first (``"first"``, the
    MoCo v2 projector of asym-siam: Linear, BN, ReLU, Linear, ReLU, Linear)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int, bn: bool | str) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError("an MLP head needs at least one layer")
        if bn not in (True, False, "first"):
            raise ValueError(f"MLP head bn must be true, false or 'first', got {bn!r}")
        mods: list[nn.Module] = []
        d = dim_in
        for i in range(layers - 1):
            with_bn = bn is True or (bn == "first" and i == 0)
            mods.append(nn.Linear(d, hidden, bias=not with_bn))
            if with_bn:
                mods.append(nn.BatchNorm1d(hidden))
            mods.append(nn.ReLU(inplace=True))
            d = hidden
        mods.append(nn.Linear(d, dim_out))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def momentum_at(step: int, total: int, m0: float, schedule: str = "cosine") -> float:
    """``m = 1 - (1 - m0) (cos(pi k / K) + 1) / 2``: m(0) = m0, m(K/2) = (1 + m0) / 2, m(K) = 1."""
    if schedule == "constant":
        return m0
    k = min(max(step, 0), total)
    return 1.0 - (1.0 - m0) * (math.cos(math.pi * k / max(total, 1)) + 1.0) / 2.0


def gather(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x (N, ...)`` over processes in rank order (itself in one process). ``with_grad``
    uses the differentiable all-gather, so gradients flow back to every process's rows."""
    return all_gather_with_grad(x) if with_grad else all_gather_no_grad(x)


def positive_mask(views: int, positives: str, device: torch.device | None = None) -> torch.Tensor:
    """``(V, V)`` bool: entry [i, j] says whether view j of a video is a positive for query view i.
    ``"others"``: j != i (rho-SSL); ``"same"``: j == i (the key of i already combines the others: MeanEnc)."""
    eye = torch.eye(views, dtype=torch.bool, device=device)
    if positives == "others":
        return ~eye
    if positives == "same":
        return eye
    raise ValueError(f"positives must be 'others' or 'same', got '{positives}'")


# --------------------------------------------------------------------------------------------------
# losses; q and k are (V, B, d) view-major; row (i, b) is view i of video b
# --------------------------------------------------------------------------------------------------


def info_nce_global(q: torch.Tensor, k: torch.Tensor, temperature: float, positives: str = "others") -> torch.Tensor:
    """rho-SimCLR: multi-positive InfoNCE against all keys of the global batch.

    q: (V, B, d) local queries; k: (V, B, d) local keys (gathered here with gradients). For query (i, b)
    the positives are keys (j, b) with ``positive_mask[i, j]``; the other views of video b that are not
    positives (the query's own view) are left out; every view of every other video is a negative.
    """
    V, B, d = q.shape
    qn = F.normalize(q.reshape(V * B, d), dim=-1)
    kn = F.normalize(k, dim=-1).reshape(V * B, d)
    k_all = gather(kn, with_grad=True)  # (W*V*B, d), blocks of V*B per rank, view-major inside
    logits = qn @ k_all.t() / temperature  # (V*B, W*V*B)
    W = k_all.shape[0] // (V * B)
    col_rank = torch.arange(W, device=q.device).repeat_interleave(V * B)
    col_view = torch.arange(V, device=q.device).repeat_interleave(B).repeat(W)
    col_vid = torch.arange(B, device=q.device).repeat(V * W)
    row_view = torch.arange(V, device=q.device).repeat_interleave(B)
    row_vid = torch.arange(B, device=q.device).repeat(V)
    same_video = (col_rank.unsqueeze(0) == rank()) & (col_vid.unsqueeze(0) == row_vid.unsqueeze(1))
    pm = positive_mask(V, positives, q.device)[row_view.unsqueeze(1), col_view.unsqueeze(0)]
    pos = same_video & pm
    excluded = same_video & ~pm
    logits = logits.masked_fill(excluded, float("-inf"))
    pos_lse = torch.logsumexp(logits.masked_fill(~pos, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - pos_lse).mean()


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
                   positives: str = "others") -> torch.Tensor:
    """rho-MoCo: InfoNCE with the video's positive keys and the queue ``(K, d)`` (normalised) as negatives."""
    V, B, d = q.shape
    qn = F.normalize(q, dim=-1)
    kn = F.normalize(k, dim=-1)
    pos = torch.einsum("ibd,jbd->bij", qn, kn) / temperature  # (B, V, V)
    pos = pos.masked_fill(~positive_mask(V, positives, q.device), float("-inf"))
    neg = torch.einsum("ibd,kd->bik", qn, queue.to(qn.dtype)) / temperature  # (B, V, K)
    all_logits = torch.cat([pos, neg], dim=2)
    return (torch.logsumexp(all_logits, dim=2) - torch.logsumexp(pos, dim=2)).mean()


def byol_loss(q: torch.Tensor, k: torch.Tensor, positives: str = "others") -> torch.Tensor:
    """rho-BYOL: mean over queries and their positives of ``2 - 2 cos(q, k+)``."""
    V = q.shape[0]
    cos = torch.einsum("ibd,jbd->bij", F.normalize(q, dim=-1), F.normalize(k, dim=-1))  # (B, V, V)
    m = positive_mask(V, positives, q.device)
    return (2.0 - 2.0 * cos[:, m]).mean()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Sinkhorn-Knopp codes (SwAV, arXiv 2006.09882, Sec. 3.1 / Alg. 1) over the global batch.

    scores: (N, K) local rows. Returns codes (N, K): each row sums to 1 and, at convergence, each
    prototype receives N_global / K of the mass (equipartition). Sums are all-reduced across processes.
    """
    s = scores.float() / eps
    m = s.max()
    if world_size() > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    Q = torch.exp(s - m).t()  # (K, N); the shift cancels in the normalisations
    n_total = Q.shape[1] * world_size()
    K = Q.shape[0]
    total = Q.sum()
    if world_size() > 1:
        dist.all_reduce(total)
    Q /= total
    for _ in range(iters):
        rows = Q.sum(dim=1, keepdim=True)
        if world_size() > 1:
            dist.all_reduce(rows)
        Q /= rows
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= n_total
    Q *= n_total
    return Q.t()


def swav_loss(
    q_scores: torch.Tensor, codes: torch.Tensor, temperature: float, positives: str = "others"
) -> torch.Tensor:
    """rho-SwAV swapped prediction: q_scores (V, B, K) of the queries, codes (V, B, K) of the targets;
    mean over queries and positives of ``-sum_c code_c log softmax(score / a)_c``."""
    V = q_scores.shape[0]
    logp = F.log_softmax(q_scores / temperature, dim=-1)  # (V, B, K)
    ce = -torch.einsum("jbc,ibc->bij", codes.to(logp.dtype), logp)  # (B, V_query, V_target)
    return ce[:, positive_mask(V, positives, q_scores.device)].mean()


# --------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------


def pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled pre-logits feature ``(N, D)``."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def _views_first(x: torch.Tensor) -> torch.Tensor:
    """(B, V, ...) -> (V*B, ...) view-major."""
    return x.transpose(0, 1).flatten(0, 1)


# --------------------------------------------------------------------------------------------------
# the four frameworks: each owns its state and its loss
# --------------------------------------------------------------------------------------------------


class Objective(nn.Module):
    """What differs between the frameworks: their state (MoCo's queue, SwAV's prototypes), what the
    keys become before the loss (SwAV's codes) and the loss itself. ``q``, ``k``: ``(V, B, d)``."""

    def begin_step(self) -> None:
        """Before a training step's forward."""

    def targets(self, k: torch.Tensor, step: int) -> torch.Tensor:
        return k

    @abstractmethod
    def loss(self, q: torch.Tensor, target: torch.Tensor, positives: str, step: int) -> torch.Tensor: ...

    def end_step(self, k: torch.Tensor) -> None:
        """After a training step's loss, with its keys."""


class SimCLRObjective(Objective):
    """Multi-positive InfoNCE over the global batch (Eq. 1); keys carry gradients unless they come from
    a momentum encoder."""

    def __init__(self, temperature: float, detach_keys: bool) -> None:
        super().__init__()
        self.temperature, self.detach_keys = temperature, detach_keys

    def loss(self, q, target, positives, step):
        return info_nce_global(q, target.detach() if self.detach_keys else target, self.temperature, positives)


class MoCoObjective(Objective):
    """InfoNCE against a FIFO queue of keys, enqueued after the loss."""

    def __init__(self, temperature: float, dim: int, queue_size: int) -> None:
        super().__init__()
        self.temperature = temperature
        bound = math.sqrt(3.0 / dim)  # U[-sqrt(3/d), sqrt(3/d)] as the reference (0.1531 at d = 128)
        self.register_buffer("queue", torch.empty(queue_size, dim).uniform_(-bound, bound))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def loss(self, q, target, positives, step):
        return info_nce_queue(q, target.detach(), self.queue.clone(), self.temperature, positives)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """FIFO: write ``keys (n, d)`` (normalised, all processes) at the pointer, wrapping around."""
        keys = gather(F.normalize(keys.detach().float(), dim=-1), with_grad=False)
        K = self.queue.shape[0]
        n = keys.shape[0]
        if n > K:
            keys, n = keys[-K:], K
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % K
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % K)

    def end_step(self, k: torch.Tensor) -> None:
        if self.training:
            self.enqueue(k.flatten(0, 1))


class BYOLObjective(Objective):
    """``2 - 2 cos(q, k)`` against the momentum target's keys."""

    def loss(self, q, target, positives, step):
        return byol_loss(q, target.detach(), positives)


class SwAVObjective(Objective):
    """Swapped prediction of Sinkhorn codes over L2-normalised prototypes, frozen for the first epoch."""

    def __init__(self, temperature: float, dim: int, num_prototypes: int, freeze_steps: int, eps: float,
                 iters: int) -> None:
        super().__init__()
        self.temperature, self.freeze_steps, self.eps, self.iters = temperature, freeze_steps, eps, iters
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)

    def begin_step(self) -> None:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def scores(self, z: torch.Tensor, step: int) -> torch.Tensor:
        w = self.prototypes.weight
        if step <= self.freeze_steps and self.training:
            w = w.detach()  # prototypes frozen during the first epoch (SwAV / rho-SSL)
        return F.normalize(z, dim=-1) @ w.t()

    @torch.no_grad()
    def targets(self, k: torch.Tensor, step: int) -> torch.Tensor:
        scores_k = self.scores(k.detach().flatten(0, 1), step).view(*k.shape[:2], -1)
        return torch.stack([sinkhorn(s, self.eps, self.iters) for s in scores_k])

    def loss(self, q, target, positives, step):
        return swav_loss(self.scores(q.flatten(0, 1), step).view(*q.shape[:2], -1), target, self.temperature,
                         positives)


# framework -> its objective, from the resolved config, whether keys come from a momentum encoder, and
# the prototype-freeze length
OBJECTIVES: dict[str, Any] = {
    "simclr": lambda cfg, momentum, freeze: SimCLRObjective(float(cfg.temperature), detach_keys=momentum),
    "moco": lambda cfg, momentum, freeze: MoCoObjective(float(cfg.temperature), cfg.proj_dim, cfg.queue_size),
    "byol": lambda cfg, momentum, freeze: BYOLObjective(),
    "swav": lambda cfg, momentum, freeze: SwAVObjective(float(cfg.temperature), cfg.proj_dim, cfg.num_prototypes,
                                                        freeze, cfg.sinkhorn_eps, cfg.sinkhorn_iters),
}


class Contrastive(nn.Module):
    """One rho-SSL framework. ``forward(batch)`` with ``batch["video"] (B, V, C, T, H, W)`` (V >= 2) and
    optional ``target`` (B, V, ...), ``small`` (B, V, n, C, T, s, s), ``mix`` (B, V, ...) returns
    ``{"loss", "pos_cos", ...}``. ``backbone`` is the source encoder's backbone (exported for probing)."""

    def __init__(self, backbone: nn.Module, cfg: ContrastiveConfig, total_steps: int = 1000,
                 freeze_prototypes_steps: int = 0) -> None:
        super().__init__()
        cfg = resolve_config(cfg)
        self.cfg = cfg
        self.framework = cfg.framework
        self.backbone = backbone
        dim = int(backbone.embed_dim)
        self.projector = MLPHead(dim, cfg.proj_hidden, cfg.proj_dim, cfg.proj_layers, cfg.proj_bn)
        self.predictor = (MLPHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim, cfg.pred_layers, True)
                          if cfg.pred_layers and cfg.pred_layers > 0 else None)
        self.temperature = float(cfg.temperature)
        self.total_steps = int(total_steps)
        self.freeze_prototypes_steps = int(freeze_prototypes_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._last_pooled: torch.Tensor | None = None
        self.uses_momentum = cfg.momentum is not None and cfg.momentum > 0
        if self.uses_momentum:
            self.target_backbone = copy.deepcopy(backbone)
            self.target_projector = copy.deepcopy(self.projector)
            if cfg.asym_bn:
                self.target_projector = sync_batchnorm(self.target_projector, cfg.framework)
            for p in list(self.target_backbone.parameters()) + list(self.target_projector.parameters()):
                p.requires_grad_(False)
        elif cfg.asym_bn:
            # the shared projector's weights, with its own synchronised BN statistics for the target only
            self.target_projector = target_projector(self.projector, cfg.framework)
        self.objective: Objective = OBJECTIVES[cfg.framework](cfg, self.uses_momentum, self.freeze_prototypes_steps)

    # -- momentum target ----------------------------------------------------------------------------
    def current_momentum(self) -> float:
        m0 = float(self.cfg.momentum or 0.0)
        return momentum_at(int(self.step), self.total_steps, m0, self.cfg.momentum_schedule)

    @torch.no_grad()
    def momentum_update(self) -> float:
        """theta_t <- m theta_t + (1 - m) theta_s on the parameters of backbone + projector."""
        m = self.current_momentum()
        for src, tgt in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            ps = [p for p in src.parameters()]
            pt = [p for p in tgt.parameters()]
            torch._foreach_mul_(pt, m)
            torch._foreach_add_(pt, ps, alpha=1.0 - m)
        return m

    # -- encoders -----------------------------------------------------------------------------------
    def source_embed(self, x: torch.Tensor, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(V*B, C, T, H, W) -> (z (V*B, d) projector output, q (V*B, d) query)."""
        self._last_pooled = pooled(self.backbone, x)
        z = project_views(self.projector, self._last_pooled, views, joint=False)
        q = z if self.predictor is None else project_views(self.predictor, z, views, joint=False)
        return z, q

    def target_embed(self, x: torch.Tensor, views: int, pooled_source: torch.Tensor | None = None) -> torch.Tensor:
        """Target projections (V*B, d); ``pooled_source``: the shared backbone's features of the same
        input, reused instead of a second backbone pass (AsymBN on SimCLR/SwAV)."""
        if self.uses_momentum:
            with torch.no_grad():
                h = pooled(self.target_backbone, x)
                return project_views(self.target_projector, h, views, joint=self.cfg.asym_bn)
        h = pooled_source if pooled_source is not None else pooled(self.backbone, x)
        head = self.target_projector if self.cfg.asym_bn else self.projector
        return project_views(head, h, views, joint=self.cfg.asym_bn)

    def criterion(self, q: torch.Tensor, target: torch.Tensor, positives: str) -> torch.Tensor:
        """q: (V, B, d) queries; target: (V, B, d) keys, or (V, B, K) codes for SwAV."""
        return self.objective.loss(q, target, positives, int(self.step))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        video = batch["video"]
        if video.ndim != 6 or video.shape[1] < 2:
            raise ValueError(
                f"{self.framework}: expected (B, V >= 2, C, T, H, W) views per video (set data.rho.clips), "
                f"got {tuple(video.shape)}"
            )
        B, V = video.shape[:2]
        out: dict[str, torch.Tensor] = {}
        if self.training and torch.is_grad_enabled():
            self.objective.begin_step()
            if self.uses_momentum:
                out["momentum"] = torch.tensor(self.momentum_update())
            self.step += 1
        x = _views_first(video)
        src = scalemix(x, _views_first(batch["mix"])) if "mix" in batch else x
        z, q = self.source_embed(src, V)
        h = self._last_pooled
        self._last_pooled = None
        tgt = _views_first(batch["target"]) if "target" in batch else x
        if not self.uses_momentum and tgt is src and not self.cfg.asym_bn:
            k = z  # shared encoder, same input: the keys are the source projections (with gradients)
        else:
            k = self.target_embed(tgt, V, pooled_source=h if tgt is src else None)
        q, k = q.view(V, B, -1), k.view(V, B, -1)
        positives = "others"
        if self.cfg.mean_enc:
            k = mean_of_others(k)
            positives = "same"
        target = self.objective.targets(k, int(self.step))
        loss = self.criterion(q, target, positives)
        if "small" in batch:  # MultiCrop: small source crops as extra queries with the same positives
            small = batch["small"]  # (B, V, n, C, T, s, s)
            n = small.shape[2]
            xs = small.permute(2, 1, 0, *range(3, small.ndim)).flatten(0, 2)  # (n*V*B, ...)
            _, qs = self.source_embed(xs, n * V)
            qs = qs.view(n, V, B, -1)
            w_main, w_small = multicrop_weights(n)
            loss = w_main * loss + w_small * sum(self.criterion(qs[s], target, positives) for s in range(n))
            out["small_crops"] = torch.tensor(float(n))
        self.objective.end_step(k)
        with torch.no_grad():
            pm = positive_mask(V, positives, q.device)
            cos = torch.einsum("ibd,jbd->bij", F.normalize(q.detach(), dim=-1), F.normalize(k.detach(), dim=-1))
            out["pos_cos"] = cos[:, pm].mean()
        out["loss"] = loss
        return out


@register_method("contrastive", ContrastiveConfig)
def build(recipe: Recipe, context: RunContext) -> Contrastive:
    cfg = resolve_config(recipe.method)
    if recipe.data.rho.clips < 1:
        raise ConfigError("method 'contrastive' needs data.rho.clips >= 1 (rho clips per video)")
    spe = cfg.steps_per_epoch if cfg.steps_per_epoch is not None else context.steps_per_epoch
    total = cfg.total_steps if cfg.total_steps is not None else context.total_steps
    freeze = cfg.freeze_prototypes_steps
    if freeze is None:
        if cfg.framework == "swav" and spe is None:
            raise ConfigError("swav: set method.steps_per_epoch (or method.freeze_prototypes_steps) for the "
                              "first-epoch prototype freeze")
        freeze = spe or 0
    # no classifier, and no head dropout: dropout on the SSL feature would only add noise
    backbone = build_backbone(recipe.model, num_classes=0, head_dropout=0.0)
    return Contrastive(backbone, cfg, total_steps=int(total), freeze_prototypes_steps=int(freeze))
