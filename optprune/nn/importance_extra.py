"""More importance scores: Bonsai, the pruning-at-initialization scores (SNIP,
GraSP, SynFlow) and GOHSP's graph-based head ranking.

Every criterion has the registry signature ``fn(structures, data=None, **kw)`` and
returns one float per group of ``structures.groups``, higher = more worth keeping.
``optprune.nn.importance.score`` imports this module the first time one of these
names is asked for. Notation as in :mod:`optprune.nn.importance`: a group g owns
parameter slices (rows of its producers, columns of its consumers, BatchNorm
entries); ``w in g`` runs over those parameter entries (buffers excluded); L is the
MEAN loss over all calibration samples, ``loss_fn(output, y)`` returns the SUM over
its batch (default cross-entropy).

* ``bonsai`` (Dery et al., forward passes only). Draw ``n_submodels`` keep masks in
  antithetic pairs (see :func:`bonsai_masks`): each group enters the pair's candidate
  set S with probability 2p (p = ``drop_fraction`` <= 1/2), and each member of S is
  dropped by exactly one mask of the pair (a fair coin). Marginally every mask drops
  every group independently with probability p; the two masks of a pair drop
  disjoint sets whose union is S (each is the other's complement within S). The
  utility of sub-model k is U_k = -(1/N) sum_n loss_fn(f_k(x_n), y_n), evaluated
  with ``structures.masked(keep_k)``; without labels y_n is the dense model's output
  and the default loss is the squared error ||f_k(x_n) - f(x_n)||^2 (distortion
  from the dense model). Ridge regression with unpenalised intercept,

      beta = argmin_b ||U_c - Z_c b||^2 + alpha ||b||^2   (Z_c, U_c centred),

  solved in closed form (primal or dual, whichever system is smaller); the score is
  beta_g, the estimated utility gained by keeping g. Groups never dropped in any
  sample have a zero centred column and score exactly 0.
* ``snip`` (Lee et al.): sum_{w in g} |dL/dw * w|, the connection sensitivity
  summed over the group (``taylor`` is |sum ...|; SNIP takes |.| per weight first).
* ``grasp`` (Wang et al.): GraSP's per-weight score is S(w) = -w * (H g)_w with
  g = dL/dtheta and H the Hessian of L, both over all trainable parameters theta;
  GraSP removes the weights with the LARGEST S (removing them reduces gradient flow
  least). We return the keep-oriented sum  -sum_{w in g} S(w) = sum_{w in g} w (H g)_w,
  so higher = keep. H g = d/dtheta (stopgrad(g) . dL/dtheta) (one double backward).
  ``temperature`` divides the logits in the loss (the paper uses 200).
* ``synflow`` (Tanaka et al., data-free): on a float64 copy of the model with every
  parameter and buffer replaced by its absolute value, R = 1^T f(1) (the all-ones
  input); score = sum_{w in g} |dR/dw * w|. For ReLU networks R is the sum over all
  input-output paths of the product of the absolute weights on the path.
  ``iterations > 1`` runs SynFlow's iterative schedule on groups: round r = 1..K
  keeps the top ceil(n * keep_fraction^(r/K)) of the still-kept groups by the scores
  of the model with the dropped groups' parameters zeroed. The returned score is
  r_g + q_g: r_g = the number of rounds group g survived (K for survivors) and
  q_g in [0, 1) its score in the round it left (the last round for survivors)
  divided by 1.000001 * that round's largest score; so the order is the
  elimination order, ties broken by the score at elimination.
* ``gohsp`` (Yin et al.): per attention layer l with H heads, head h's output
  P_h = O_h W_proj[:, J_h]^T, its contribution to the output projection's result
  on all calibration tokens (O_h = the projection's input columns J_h of head h;
  read by a hook on that Linear, so ``cosine`` works for any head group with a
  Linear consumer, e.g. BERT heads from optprune.nn.hf; ``kl`` needs
  optprune.nn.models.MultiHeadAttention). Similarity graph on the heads (no self
  loops):
  ``similarity="cosine"``: c_ij = cos(vec P_i, vec P_j), w_ij = exp(c_ij / tau);
  ``similarity="kl"``: w_ij = exp(-KL(A_i || A_j) / tau) with A_h the attention
  maps (KL per query row, averaged over rows and samples); tau defaults to 0.1
  for cosine and 1 (nats) for KL. The Markov chain is PageRank's damped walk
  P_ij = d w_ij / sum_k w_ik + (1 - d) / H (d = ``damping``, 0.85), so every
  entry is positive, the stationary distribution pi (pi P = pi, sum pi = 1) is
  unique and pi_h >= (1 - d) / H: a head no other head resembles keeps a
  bounded score (without damping a near-isolated head's pi -> 0). A head with large
  pi sits where the walk lingers: among heads that compute alike, i.e. whose
  function the layer keeps when it goes (redundant); pi = 1/H for all heads when
  all are equally alike. Orientation: score_h = base_h / (H pi_h), a redundancy
  discount of ``base_h`` (1 when all heads are equally alike, < 1 for a head in a
  cluster of look-alikes). ``base="energy"`` (default): base_h = mean over
  calibration tokens of ||P_h||^2; ``base="uniform"``: base_h = 1 (the pure graph
  ranking). Non-head groups get their output energy
  sum_c sum_{j in g} ||W_c[:, j]||^2 E[x_j^2] (the mean squared norm of the group's
  contribution to its consumers' outputs; exact for one Linear column; cross
  terms between a Flatten group's columns or a conv's kernel taps are ignored),
  so heads and neurons share units and one allocation can trade them. With
  ``base="uniform"`` the two kinds are in different units: discover the heads
  alone (``exclude=`` the FFN layers) and pass ``heads_only=True`` to be sure.
  :func:`head_graphs` returns the chains. Fidelity: this follows the published method
  (formulations/scores.md: heads = nodes, edges = likeness of the heads' attention
  outputs, importance from the stationary distribution); the edge weights, damping and the redundancy
  orientation are this module's documented choices, not a transcription of the
  GOHSP code, and GOHSP's second stage (ADMM soft pruning) is replaced by the
  allocation MILP.

SynFlow's conservation argument (scores are path sums) holds for positively
homogeneous networks (Linear, Conv, ReLU, pooling); through LayerNorm, GELU,
softmax or BatchNorm with |running stats| the same formula is computed but it is
no longer a path sum.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedModuleError, ValidationError, check
from .calib import batches, param_dtype
from .importance import _default_loss, _grads, _slice, register_importance
from .models import MultiHeadAttention
from .structures import StructureSet

__all__ = ["bonsai", "bonsai_masks", "ridge", "snip", "grasp", "synflow", "gohsp",
           "head_graphs", "HeadGraph", "stationary_distribution", "group_sum"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------- helpers
def group_sum(structures: StructureSet, per_param: dict[str, torch.Tensor]) -> np.ndarray:
    """sum over each group's parameter slices of a per-entry tensor (same shapes as
    the parameters, keyed by parameter name); slices of buffers or of tensors not in
    ``per_param`` contribute 0."""
    out = np.zeros(len(structures.groups))
    with torch.no_grad():
        for k, g in enumerate(structures.groups):
            v = 0.0
            for n, d, i in g.slices:
                if n in per_param and n in structures.param_names:
                    v += float(_slice(per_param[n], d, i).double().sum())
            out[k] = v
    return out


def _check_int(v: Any, what: str, lo: int) -> int:
    check(bool(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= lo), what,
          f"an int >= {lo}", v)
    return int(v)


def _check_pos(v: Any, what: str, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
        and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    check(bool(ok), what, "a finite number >= 0" if allow_zero else "a finite number > 0", v)
    return float(v)


# ----------------------------------------------------------------- Bonsai
def bonsai_masks(n_groups: int, n_submodels: int, drop_fraction: float,
                 seed: int = 0) -> np.ndarray:
    """Keep masks (n_submodels, n_groups) of bool in antithetic pairs (rows 2k, 2k+1).

    For each pair every group enters the candidate set S independently with
    probability 2 * drop_fraction; each member of S is dropped by exactly one of
    the two masks (a fair coin). So each mask drops each group with probability
    ``drop_fraction``, and the pair's dropped sets are disjoint with union S. An
    odd ``n_submodels`` keeps the first mask of the last pair.
    """
    n_groups = _check_int(n_groups, "The number of groups of bonsai_masks", 1)
    n_submodels = _check_int(n_submodels, "The 'n_submodels' of bonsai", 2)
    ok = isinstance(drop_fraction, (int, float, np.floating)) and not isinstance(drop_fraction, bool)
    p = float(drop_fraction) if ok else float("nan")
    check(ok and 0 < p <= 0.5,
          "The 'drop_fraction' of bonsai", "in (0, 0.5] (each antithetic pair drops "
          "disjoint sets, so at most half of the groups each)", drop_fraction)
    rng = np.random.default_rng(seed)
    n_pairs = (n_submodels + 1) // 2
    in_s = rng.random((n_pairs, n_groups)) < 2 * p
    first = rng.random((n_pairs, n_groups)) < 0.5
    keep = np.empty((2 * n_pairs, n_groups), dtype=bool)
    keep[0::2] = ~(in_s & first)
    keep[1::2] = ~(in_s & ~first)
    return keep[:n_submodels]


def ridge(z: np.ndarray, u: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression u ~ z @ beta + b with unpenalised intercept b:
    beta = (Zc^T Zc + alpha I)^-1 Zc^T uc = Zc^T (Zc Zc^T + alpha I)^-1 uc
    (the smaller system is solved); returns (beta, b)."""
    z = np.asarray(z, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    check(z.ndim == 2 and u.shape == (z.shape[0],), "The shapes of ridge's (z, u)",
          "(m, n) and (m,)", (z.shape, u.shape))
    alpha = _check_pos(alpha, "The ridge 'alpha'", allow_zero=True)
    zm, um = z.mean(0), u.mean()
    zc, uc = z - zm, u - um
    m, n = zc.shape
    if m < n:
        beta = zc.T @ np.linalg.lstsq(zc @ zc.T + alpha * np.eye(m), uc, rcond=None)[0]
    else:
        beta = np.linalg.lstsq(zc.T @ zc + alpha * np.eye(n), zc.T @ uc, rcond=None)[0]
    return beta, float(um - zm @ beta)


def _squared_error(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return ((out - ref) ** 2).sum()


# A tuple comes back only with return_samples=True, which score() never passes.
@register_importance("bonsai")  # type: ignore[arg-type]
def bonsai(structures: StructureSet, data: Any = None, n_submodels: int = 64,
           drop_fraction: float = 0.2, alpha: float = 1e-2, seed: int = 0,
           loss_fn: LossFn | None = None, batch_size: int = 256,
           return_samples: bool = False) -> np.ndarray | tuple:
    """Bonsai: ridge coefficients of sub-model utility on the keep indicators
    (forward passes only; see the module docstring). With labels the default loss
    is cross-entropy; without, squared distortion from the dense output.
    ``return_samples`` also returns (keep masks, utilities)."""
    n_submodels = _check_int(n_submodels, "The 'n_submodels' of bonsai", 2)
    alpha = _check_pos(alpha, "The ridge 'alpha' of bonsai", allow_zero=True)
    model = structures.model
    dtype = param_dtype(model)
    cached = list(batches(data, structures.input_shape, batch_size, "bonsai", dtype=dtype))
    labelled = all(y is not None for _, y in cached)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            refs: list[torch.Tensor]
            if labelled:
                refs = [y for _, y in cached if y is not None]  # all of them: labelled
                lf = loss_fn or _default_loss
            else:
                refs = [model(x) for x, _ in cached]
                lf = loss_fn or _squared_error
            n = sum(x.shape[0] for x, _ in cached)
            masks = bonsai_masks(len(structures.groups), n_submodels, drop_fraction, seed)
            util = np.empty(n_submodels)
            for k, keep in enumerate(masks):
                with structures.masked(keep) as m:
                    tot = sum(float(lf(m(x), r)) for (x, _), r in zip(cached, refs))
                util[k] = -tot / n
    finally:
        model.train(was)
    if not np.all(np.isfinite(util)):
        raise ValidationError("The sub-model utilities of bonsai must be finite; some losses "
                              "are NaN or infinite. Check the calibration data and loss_fn.")
    beta, _ = ridge(masks.astype(np.float64), util, alpha)
    return (beta, masks, util) if return_samples else beta


# ----------------------------------------------------------------- SNIP, GraSP
@register_importance("snip")
def snip(structures: StructureSet, data: Any = None, loss_fn: LossFn | None = None,
         batch_size: int = 256) -> np.ndarray:
    """SNIP: sum_{w in g} |dL/dw * w| (L = mean loss over the calibration data)."""
    grads, _ = _grads(structures, data, loss_fn, batch_size, "snip")
    params = dict(structures.model.named_parameters())
    with torch.no_grad():
        per = {n: (grads[n] * params[n]).abs() for n in grads}
    return group_sum(structures, per)


def hessian_gradient_product(structures: StructureSet, data: Any, loss_fn: LossFn | None = None,
                             batch_size: int = 256, temperature: float = 1.0
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(g, H g) over all trainable parameters, g = dL/dtheta, H = d^2 L / dtheta^2,
    L the mean loss over the calibration data (logits divided by ``temperature``)."""
    model = structures.model
    loss_fn = loss_fn or _default_loss
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = sorted(params)
    check(len(names) > 0, "The trainable parameters of the model for grasp", "non-empty", 0)
    g, total = _grads(structures, data, loss_fn, batch_size, "grasp", temperature, names)
    hg = {n: torch.zeros_like(params[n]) for n in names}
    was = model.training
    model.eval()
    try:
        for x, y in batches(data, structures.input_shape, batch_size, "grasp", need_targets=True,
                            dtype=param_dtype(model)):
            assert y is not None  # need_targets=True
            loss = loss_fn(model(x) / temperature, y)
            gs = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True,
                                     allow_unused=True)
            z = sum((gr * g[n]).sum() for n, gr in zip(names, gs) if gr is not None)
            if not isinstance(z, torch.Tensor) or not z.requires_grad:
                continue  # the loss is linear in every parameter here: H g = 0
            hs = torch.autograd.grad(z, [params[n] for n in names], allow_unused=True)
            for n, h in zip(names, hs):
                if h is not None:
                    hg[n] += h.detach()
    finally:
        model.train(was)
    return g, {n: v / total for n, v in hg.items()}


@register_importance("grasp")
def grasp(structures: StructureSet, data: Any = None, loss_fn: LossFn | None = None,
          batch_size: int = 256, temperature: float = 1.0) -> np.ndarray:
    """GraSP, keep-oriented: sum_{w in g} w * (H g)_w = -(GraSP's removal score)."""
    temperature = _check_pos(temperature, "The 'temperature' of grasp")
    _, hg = hessian_gradient_product(structures, data, loss_fn, batch_size, temperature)
    params = dict(structures.model.named_parameters())
    with torch.no_grad():
        per = {n: params[n] * hg[n] for n in hg}
    return group_sum(structures, per)


# ----------------------------------------------------------------- SynFlow
def _synflow_once(structures: StructureSet, model: nn.Module, drop: np.ndarray) -> np.ndarray:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for g in np.flatnonzero(drop):
            for n, d, i in structures.groups[g].slices:
                t = params.get(n)
                if t is not None:
                    t.index_fill_(d, torch.as_tensor(i, dtype=torch.long), 0.0)
    for p in params.values():
        p.grad = None
    out = model(torch.ones(1, *structures.input_shape, dtype=torch.float64))
    r = out.sum()
    names = [n for n, p in params.items() if p.requires_grad]
    gs = torch.autograd.grad(r, [params[n] for n in names], allow_unused=True)
    with torch.no_grad():
        per = {n: (gr * params[n]).abs() for n, gr in zip(names, gs) if gr is not None}
    return group_sum(structures, per)


@register_importance("synflow")
def synflow(structures: StructureSet, data: Any = None, iterations: int = 1,
            keep_fraction: float = 0.5) -> np.ndarray:
    """SynFlow (data-free; ``data`` is ignored): sum_{w in g} |dR/dw * w| with
    R = 1^T f_|theta|(1) in float64; ``iterations > 1`` runs the iterative
    schedule towards ``keep_fraction`` (see the module docstring)."""
    iterations = _check_int(iterations, "The 'iterations' of synflow", 1)
    if iterations > 1:
        check(isinstance(keep_fraction, (int, float)) and 0 < keep_fraction < 1,
              "The 'keep_fraction' of iterative synflow", "in (0, 1)", keep_fraction)
    work = copy.deepcopy(structures.model).double().eval()
    with torch.no_grad():
        for t in list(work.parameters()) + list(work.buffers()):
            if t.is_floating_point():
                t.abs_()
    n = len(structures.groups)
    drop = np.zeros(n, dtype=bool)
    s = _synflow_once(structures, work, drop)
    if iterations == 1:
        return s
    out = np.zeros(n)
    for r in range(1, iterations + 1):
        alive = np.flatnonzero(~drop)
        top = s[alive].max()
        q = s / (1.000001 * top) if top > 0 else np.zeros(n)
        target = int(math.ceil(n * keep_fraction ** (r / iterations)))
        order = alive[np.argsort(-s[alive], kind="stable")]
        leaving, staying = order[target:], order[:target]
        out[leaving] = (r - 1) + q[leaving]
        drop[leaving] = True
        if r == iterations:
            out[staying] = iterations + q[staying]
            break
        s = _synflow_once(structures, work, drop)
    return out


# ----------------------------------------------------------------- GOHSP
@dataclass(frozen=True)
class HeadGraph:
    """One attention layer's head graph: similarity ``weights`` (H, H, zero
    diagonal), row-stochastic ``transition`` P, stationary ``pi`` (pi P = pi,
    sum 1), mean output energy per head, and the head groups' positions."""

    layer: str
    weights: np.ndarray
    transition: np.ndarray
    pi: np.ndarray
    energy: np.ndarray
    positions: np.ndarray


def stationary_distribution(p: np.ndarray) -> np.ndarray:
    """The pi >= 0 with pi P = pi, sum(pi) = 1 of an irreducible row-stochastic P
    (solves (P^T - I) pi = 0 with the normalisation row appended)."""
    p = np.asarray(p, dtype=np.float64)
    check(p.ndim == 2 and p.shape[0] == p.shape[1] and p.shape[0] > 0,
          "The transition matrix", "square and non-empty", p.shape)
    check(bool(np.all(p >= 0)) and np.allclose(p.sum(1), 1.0), "The transition matrix",
          "row-stochastic (non-negative, rows summing to 1)", "other")
    h = p.shape[0]
    a = np.vstack([p.T - np.eye(h), np.ones((1, h))])
    b = np.zeros(h + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(a, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _attention_maps(mod: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention maps (B, H, T, T) of optprune's MultiHeadAttention on input x."""
    b, t, _ = x.shape
    h, dh = mod.num_heads, mod.head_dim
    q = mod.q(x).view(b, t, h, dh).transpose(1, 2)
    k = mod.k(x).view(b, t, h, dh).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-2, -1) * dh ** -0.5, dim=-1)


def head_graphs(structures: StructureSet, data: Any, similarity: str = "cosine",
                temperature: float | None = None, damping: float = 0.85,
                batch_size: int = 256) -> list[HeadGraph]:
    """GOHSP's per-layer Markov chains on the heads (see the module docstring)."""
    return _gohsp_pass(structures, data, similarity, temperature, damping, batch_size, [])[0]


def _gohsp_pass(structures: StructureSet, data: Any, similarity: str,
                temperature: float | None, damping: float, batch_size: int, consumers: list[str]
                ) -> tuple[list[HeadGraph], dict[str, np.ndarray]]:
    """One pass over the calibration data: the head graphs, and E[x_j^2] of every
    input channel of the named consumers (over samples and positions)."""
    check(similarity in ("cosine", "kl"), "The 'similarity' of gohsp", "'cosine' or 'kl'",
          similarity)
    tau = _check_pos(({"cosine": 0.1, "kl": 1.0}[similarity] if temperature is None
                      else temperature), "The 'temperature' of gohsp")
    ok = isinstance(damping, (int, float)) and not isinstance(damping, bool) and 0 < damping <= 1
    check(ok, "The 'damping' of gohsp", "in (0, 1] (1 = no teleport)", damping)
    named = dict(structures.model.named_modules())
    layers: dict[str, list[int]] = {}
    for k, g in enumerate(structures.groups):
        if g.kind == "head":
            layers.setdefault(g.layer, []).append(k)
    cons_of = _head_consumers(structures, layers, named, similarity)
    acc: dict[str, dict[str, Any]] = {ly: {"n": 0, "gram": 0.0, "kl": 0.0, "rows": 0}
                                      for ly in layers}
    sq: dict[str, list] = {c: [0, 0.0] for c in consumers}
    hooks = []

    def make_heads(name: str, lin: nn.Linear):
        chans = [list(structures.groups[k].consumers[0][1]) for k in layers[name]]
        w = lin.weight.detach()

        def hook(_m, args):
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1])
            c = torch.stack([(x[:, j] @ w[:, j].T).double().reshape(-1) for j in chans])
            a = acc[name]
            a["gram"] = a["gram"] + c @ c.T  # (H, H) over all tokens and outputs
            a["n"] += x.shape[0]
        return hook

    def make_kl(name: str, mod: MultiHeadAttention):
        def hook(_m, args):
            att = _attention_maps(mod, args[0].detach()).double()
            a = acc[name]
            la = torch.log(att.clamp_min(1e-300))
            # KL(A_i || A_j) summed over (b, query): sum A_i (log A_i - log A_j)
            ent = (att * la).sum((0, 2, 3))  # (H,)
            cross = torch.einsum("bitk,bjtk->ij", att, la)
            a["kl"] = a["kl"] + (ent[:, None] - cross)
            a["rows"] += att.shape[0] * att.shape[2]
        return hook

    def make_sq(name: str, conv: bool):
        def hook(_m, args):
            x = args[0].detach().double()
            x2 = x.transpose(0, 1).reshape(x.shape[1], -1).T if conv else x.reshape(-1, x.shape[-1])
            sq[name][0] += x2.shape[0]
            sq[name][1] = sq[name][1] + (x2 * x2).sum(0)
        return hook

    for ly in layers:
        hooks.append(named[cons_of[ly]].register_forward_pre_hook(
            make_heads(ly, named[cons_of[ly]])))
        if similarity == "kl":
            hooks.append(named[ly].register_forward_pre_hook(make_kl(ly, named[ly])))
    for c in consumers:
        hooks.append(named[c].register_forward_pre_hook(make_sq(c, isinstance(named[c], nn.Conv2d))))
    model = structures.model
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches(data, structures.input_shape, batch_size, "gohsp",
                                dtype=param_dtype(model)):
                model(x)
    finally:
        model.train(was)
        for hk in hooks:
            hk.remove()
    out = [_head_graph(ly, pos, acc[ly], similarity, tau, damping) for ly, pos in layers.items()]
    return out, {c: (v[1].numpy() / v[0]) for c, v in sq.items()}


def _head_consumers(structures: StructureSet, layers: dict[str, list[int]],
                    named: dict[str, nn.Module], similarity: str) -> dict[str, str]:
    """layer -> the Linear output projection all its heads feed; raises naming every
    layer without one."""
    # a head's contribution P_h = x[..., J_h] W[:, J_h]^T is read at its consumer
    # (the output projection) input, which works for any head group with a Linear
    # consumer; the attention maps of "kl" need optprune's MultiHeadAttention.
    cons_of: dict[str, str] = {}
    bad = []
    for ly, pos in layers.items():
        cs = {structures.groups[k].consumers[0][0] if structures.groups[k].consumers else ""
              for k in pos}
        c = cs.pop() if len(cs) == 1 else ""
        if not c or not isinstance(named.get(c), nn.Linear) or \
                (similarity == "kl" and not isinstance(named.get(ly), MultiHeadAttention)):
            bad.append(ly)
        cons_of[ly] = c
    if bad:
        raise UnsupportedModuleError(
            f"gohsp needs every head of a layer to feed one Linear output projection "
            f"(and, for similarity='kl', optprune.nn.models.MultiHeadAttention); the head "
            f"groups of {bad} do not. Use similarity='cosine' or another criterion.")
    return cons_of


def _head_graph(ly: str, pos: list[int], a: dict[str, Any], similarity: str, tau: float,
                damping: float) -> HeadGraph:
    """The Markov chain of one layer's heads from the pass's sums ``a``."""
    gram = a["gram"].numpy()
    energy = np.diag(gram) / a["n"]
    h = len(pos)
    if similarity == "cosine":
        nrm = np.sqrt(np.clip(np.diag(gram), 1e-300, None))
        sim = np.clip(gram / np.outer(nrm, nrm), -1.0, 1.0)
        w = np.exp((sim - 1.0) / tau)  # exp(c/tau) up to a factor that cancels in P
    else:
        kl = np.clip(a["kl"].numpy() / a["rows"], 0.0, None)
        w = np.exp(-kl / tau)
    w = np.maximum(w, 1e-300)  # every off-diagonal edge > 0: the chain is irreducible
    np.fill_diagonal(w, 0.0)
    p = np.ones((1, 1)) if h == 1 else \
        damping * w / w.sum(1, keepdims=True) + (1.0 - damping) / h
    return HeadGraph(ly, w, p, stationary_distribution(p), energy, np.asarray(pos, dtype=np.int64))


@register_importance("gohsp")
def gohsp(structures: StructureSet, data: Any = None, similarity: str = "cosine",
          temperature: float | None = None, damping: float = 0.85, base: str = "energy",
          heads_only: bool = False, batch_size: int = 256) -> np.ndarray:
    """GOHSP head ranking: base_h / (H pi_h) for heads (pi the stationary
    distribution of the layer's head-similarity chain), output energy
    sum_c sum_{j in g} ||W_c[:, j]||^2 E[x_j^2] for other groups (see the module
    docstring). ``heads_only`` raises when other groups are present."""
    check(base in ("energy", "uniform"), "The 'base' of gohsp", "'energy' or 'uniform'", base)
    kinds = sorted(set(structures.kinds))
    if "head" not in kinds:
        raise ValidationError(
            "gohsp ranks attention heads, but the structures hold none (kinds: "
            f"{kinds}). Use a model with optprune.nn.models.MultiHeadAttention or another "
            "criterion such as 'flap'.")
    if heads_only and kinds != ["head"]:
        raise ValidationError(
            f"With heads_only=True the structures of gohsp must be heads only; got kinds "
            f"{kinds}. Pass exclude=[...] to discover() or heads_only=False.")
    others = [k for k, g in enumerate(structures.groups) if g.kind != "head"]
    cons = sorted({c for k in others for c, _ in structures.groups[k].consumers})
    graphs, ex2 = _gohsp_pass(structures, data, similarity, temperature, damping, batch_size,
                              cons)
    s = np.zeros(len(structures.groups))
    for hg in graphs:
        b = hg.energy if base == "energy" else np.ones(len(hg.positions))
        s[hg.positions] = b / (len(hg.positions) * hg.pi)
    params = dict(structures.model.named_parameters())
    col = {}
    for c in cons:
        w = params[f"{c}.weight"].detach().double()
        w = w.transpose(0, 1).reshape(w.shape[1], -1)
        col[c] = (w * w).sum(1).numpy() * ex2[c]
    for k in others:
        s[k] = sum(col[c][list(ch)].sum() for c, ch in structures.groups[k].consumers)
    return s
