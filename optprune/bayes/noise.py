"""Multiplicative noise per structure with a truncated log-normal posterior (BMRS).

Every prunable structure i (a neuron, a conv channel, a head: one group of
:func:`optprune.nn.discover`) gets a scalar noise ``theta_i`` that multiplies its
output wherever it is read. With ``z = log theta``:

* prior       p(z)  = 1 / (b - a)                      on [a, b] = [-20, 0]
  (log-uniform on theta, truncated);
* posterior   q(z)  = N(z; mu, sigma^2) / (sigma Z)     on [a, b],
  ``Z = Phi(beta) - Phi(alpha)``, ``alpha = (a - mu) / sigma``, ``beta = (b - mu) / sigma``
  (a truncated normal on log theta, i.e. a truncated log-normal on theta), one
  (mu, log sigma) pair per structure.

Closed forms used here (phi, Phi: standard normal density and CDF):

* KL(q || p) = ln(b - a) - H(q),
  H(q) = 0.5 ln(2 pi e) + ln sigma + ln Z + (alpha phi(alpha) - beta phi(beta)) / (2 Z);
* E[theta^k] = exp(k mu + k^2 sigma^2 / 2) (Phi(beta - k sigma) - Phi(alpha - k sigma)) / Z;
* SNR(theta) = E[theta] / sqrt(E[theta^2] - E[theta]^2);
* reparameterized sample: u ~ U(0, 1), z = mu + sigma Phi^-1(Phi(alpha) + u Z)
  (computed on the reflected side when alpha > 0, where Phi(alpha) ~ 1 would lose
  every digit).

``ln Z`` is computed as a difference of ``log_ndtr`` values on the side of the
tail the interval lies in, so it stays finite for intervals 30 standard deviations
away from the mean.

Where the noise goes: a forward pre-hook on every *consumer* of a structure (the
Linear/Conv2d reading its channel, as found by discovery) multiplies the consumer's
input channels of that structure by ``theta_i``; one sample per example and
structure is shared by all consumers of the structure (a residual channel feeds
several). Multiplying a consumer's input is the same as multiplying the structure's
output after its activation (and after BatchNorm), and ``theta_i = 0`` is exactly
removing the structure. In eval mode the multiplier is ``E[theta_i]``; a pruned
structure (``mask_i = 0``) is multiplied by 0 in both modes.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence, cast

import numpy as np
import torch
from torch import nn

from ..errors import UnsupportedModuleError, ValidationError, check

__all__ = [
    "LOG_THETA_RANGE", "NoiseLayer", "NoisyModel", "attach_noise", "truncnorm_log_z",
    "truncnorm_kl_to_uniform", "truncnorm_log_moment", "theta_mean", "theta_snr",
    "sample_truncnorm",
]

LOG_THETA_RANGE = (-20.0, 0.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """ln(1 - e^x) for x <= 0, accurate on both sides of -ln 2 (Maechler 2012)."""
    x = torch.clamp(x, max=-1e-300)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)),
                       torch.log1p(-torch.exp(x)))


def truncnorm_log_z(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """ln(Phi(beta) - Phi(alpha)) for alpha < beta, stable in both tails."""
    upper = alpha > 0  # interval in the upper tail: use Phi(-alpha) - Phi(-beta)
    lo = torch.where(upper, -beta, alpha)
    hi = torch.where(upper, -alpha, beta)
    lhi = torch.special.log_ndtr(hi)
    llo = torch.special.log_ndtr(lo)
    return lhi + _log1mexp(llo - lhi)


def _std(mu: torch.Tensor, sigma: torch.Tensor, a: float, b: float):
    return (a - mu) / sigma, (b - mu) / sigma


def truncnorm_kl_to_uniform(mu: torch.Tensor, sigma: torch.Tensor, a: float = -20.0,
                            b: float = 0.0) -> torch.Tensor:
    """KL(q || p) per structure: q = N(mu, sigma^2) truncated to [a, b], p uniform on
    [a, b] (the same in z = log theta and in theta: KL is invariant under the map)."""
    alpha, beta = _std(mu, sigma, a, b)
    log_z = truncnorm_log_z(alpha, beta)
    # alpha phi(alpha) / Z, in logs so that tiny Z does not overflow.
    ta = alpha * torch.exp(-0.5 * alpha ** 2 - _LOG_SQRT_2PI - log_z)
    tb = beta * torch.exp(-0.5 * beta ** 2 - _LOG_SQRT_2PI - log_z)
    entropy = 0.5 * math.log(2 * math.pi * math.e) + torch.log(sigma) + log_z + 0.5 * (ta - tb)
    return math.log(b - a) - entropy


def truncnorm_log_moment(mu: torch.Tensor, sigma: torch.Tensor, k: float, a: float = -20.0,
                         b: float = 0.0) -> torch.Tensor:
    """ln E[theta^k] = k mu + k^2 sigma^2 / 2 + ln Z(alpha - k sigma, beta - k sigma) - ln Z."""
    alpha, beta = _std(mu, sigma, a, b)
    return (k * mu + 0.5 * k * k * sigma ** 2 + truncnorm_log_z(alpha - k * sigma, beta - k * sigma)
            - truncnorm_log_z(alpha, beta))


def theta_mean(mu: torch.Tensor, sigma: torch.Tensor, a: float = -20.0, b: float = 0.0
               ) -> torch.Tensor:
    """E[theta] under the truncated log-normal posterior."""
    return torch.exp(truncnorm_log_moment(mu, sigma, 1.0, a, b))


def theta_snr(mu: torch.Tensor, sigma: torch.Tensor, a: float = -20.0, b: float = 0.0
              ) -> torch.Tensor:
    """E[theta] / sd[theta] = 1 / sqrt(E[theta^2] / E[theta]^2 - 1)."""
    l1 = truncnorm_log_moment(mu, sigma, 1.0, a, b)
    l2 = truncnorm_log_moment(mu, sigma, 2.0, a, b)
    return 1.0 / torch.sqrt(torch.clamp(torch.expm1(l2 - 2 * l1), min=1e-300))


def sample_truncnorm(mu: torch.Tensor, sigma: torch.Tensor, u: torch.Tensor, a: float = -20.0,
                     b: float = 0.0) -> torch.Tensor:
    """z = F^-1(u) of N(mu, sigma^2) truncated to [a, b], differentiable in mu and sigma
    (inverse-CDF reparameterization); ``u`` uniform in (0, 1), broadcast against mu."""
    alpha, beta = _std(mu, sigma, a, b)
    flip = alpha > 0  # reflect: w = (mu - z) / sigma lies in [-beta, -alpha], a lower tail
    lo = torch.where(flip, -beta, alpha)
    hi = torch.where(flip, -alpha, beta)
    plo, phi_ = torch.special.ndtr(lo), torch.special.ndtr(hi)
    p = plo + u * (phi_ - plo)
    tiny = torch.finfo(p.dtype).tiny
    e = torch.special.ndtri(torch.clamp(p, min=tiny, max=1.0 - 1e-16))
    e = torch.minimum(torch.maximum(e, lo), hi)
    z = mu + sigma * torch.where(flip, -e, e)
    return torch.clamp(z, a, b)


class NoiseLayer(nn.Module):
    """The posterior of ``n`` structures of one (layer, kind): ``mu`` and ``log_sigma``
    (parameters) and ``mask`` (buffer; 0 = pruned, its theta is 0)."""

    mask: torch.Tensor
    frozen_mu: torch.Tensor
    frozen_log_sigma: torch.Tensor

    def __init__(self, n: int, layer: str, kind: str, mu_init: float = 0.0,
                 log_sigma_init: float = -2.0, a: float = -20.0, b: float = 0.0,
                 log_sigma_range: tuple[float, float] = (-10.0, 4.0)) -> None:
        super().__init__()
        check(a < b, "The truncation interval [a, b] of NoiseLayer", "non-empty (a < b)", (a, b))
        check(a <= mu_init <= b, "The 'mu_init' of NoiseLayer", f"in [a, b] = [{a}, {b}]", mu_init)
        self.layer, self.kind, self.a, self.b = layer, kind, float(a), float(b)
        self.log_sigma_range = (float(log_sigma_range[0]), float(log_sigma_range[1]))
        self.mu = nn.Parameter(torch.full((n,), float(mu_init)))
        self.log_sigma = nn.Parameter(torch.full((n,), float(log_sigma_init)))
        self.register_buffer("mask", torch.ones(n))
        # Values of pruned structures, frozen when they were pruned (see freeze_pruned).
        self.register_buffer("frozen_mu", torch.zeros(n))
        self.register_buffer("frozen_log_sigma", torch.zeros(n))

    @property
    def n(self) -> int:
        return self.mu.numel()

    def sigma(self) -> torch.Tensor:
        return torch.exp(torch.clamp(self.log_sigma, *self.log_sigma_range))

    def params64(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, sigma) in float64 (mu may leave [a, b]: q is still a density on [a, b])."""
        return (self.mu.double(), self.sigma().double())

    def kl(self) -> torch.Tensor:
        """Sum of KL(q_i || p) over the structures still in the model."""
        mu, sigma = self.params64()
        return (truncnorm_kl_to_uniform(mu, sigma, self.a, self.b) * self.mask.double()).sum()

    @torch.no_grad()
    def prune(self, drop: torch.Tensor) -> None:
        """Mask the structures where ``drop`` is True and freeze their posterior."""
        drop = drop.to(torch.bool) & (self.mask > 0)
        self.frozen_mu[drop] = self.mu[drop]
        self.frozen_log_sigma[drop] = self.log_sigma[drop]
        self.mask[drop] = 0.0

    @torch.no_grad()
    def freeze_pruned(self) -> None:
        """Undo optimizer drift (momentum) of pruned structures' posteriors."""
        off = self.mask == 0
        if bool(off.any()):
            self.mu[off] = self.frozen_mu[off]
            self.log_sigma[off] = self.frozen_log_sigma[off]

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, kind={self.kind!r}, n={self.n}, a={self.a}, b={self.b}"


class _Owner:
    """How a consumer's hook finds its NoisyModel (see NoisyModel.__init__)."""

    def __init__(self, model: "NoisyModel | None") -> None:
        self.model = model


def _noise_hook(mod: nn.Module, args: tuple) -> tuple | None:
    """Multiply the consumer's input channels by theta of the structures they carry."""
    owner = mod.__dict__.get("_bmrs_owner")
    theta = None if owner is None or owner.model is None else owner.model._current
    if theta is None:
        return None
    x = args[0]
    mult = theta[:, mod.__dict__["_bmrs_src"].to(theta.device)].to(x.dtype)
    if isinstance(mod, nn.Conv2d):
        mult = mult[:, :, None, None]
    elif x.dim() > 2:
        mult = mult.view(mult.shape[0], *([1] * (x.dim() - 2)), mult.shape[1])
    return (x * mult,) + tuple(args[1:])


def _slot_key(layer: str, kind: str) -> str:
    return f"{layer.replace('.', '__')}__{kind}"


class NoisyModel(nn.Module):
    """``base`` with a :class:`NoiseLayer` on every slot of ``structures``.

    Build with :func:`attach_noise`. ``forward`` samples theta (training mode) or uses
    E[theta] (eval mode) and runs ``base``; calling ``base`` directly runs the plain
    network (the hooks are idle outside this forward).

    ``structures`` is the StructureSet of ``base`` (ids, layers, exact costs), and
    ``group_slot[i]``/``group_pos[i]`` locate group i in the noise layers.
    """

    _perm: torch.Tensor

    def __init__(self, base: nn.Module, structures: Any, noise: dict[str, NoiseLayer]) -> None:
        super().__init__()
        self.base = base
        self.noise = nn.ModuleDict(noise)
        self.structures = structures
        self._keys = list(noise)
        n = len(structures.groups)
        slot_pos: dict[str, int] = {}
        self.group_slot: list[str] = []
        self.group_pos: list[int] = []
        offsets, off = {}, 0
        for k in self._keys:
            offsets[k] = off
            off += noise[k].n
        perm = np.empty(n, dtype=np.int64)
        for i, g in enumerate(structures.groups):
            k = _slot_key(g.layer, g.kind)
            j = slot_pos.get(k, 0)
            slot_pos[k] = j + 1
            self.group_slot.append(k)
            self.group_pos.append(j)
            perm[i] = offsets[k] + j
        # theta of group i = concat(layer thetas)[:, perm[i]]; column n is the constant 1.
        self.register_buffer("_perm", torch.as_tensor(perm), persistent=False)
        named = dict(base.named_modules())
        src: dict[str, torch.Tensor] = {}
        for i, g in enumerate(structures.groups):
            for cname, chans in g.consumers:
                if cname not in src:
                    m = named[cname]
                    width = m.in_features if isinstance(m, nn.Linear) else m.in_channels
                    src[cname] = torch.full((width,), n, dtype=torch.long)
                src[cname][list(chans)] = i
        self._src = src
        self._current: torch.Tensor | None = None
        self._hook_ids: dict[str, int] = {}
        for cname, idx in src.items():
            m = named[cname]
            # Plain attributes (not submodules/buffers): a deep copy of this model maps
            # the owner to the copy, so copies carry working hooks of their own.
            object.__setattr__(m, "_bmrs_owner", _Owner(self))
            object.__setattr__(m, "_bmrs_src", idx)
            self._hook_ids[cname] = m.register_forward_pre_hook(_noise_hook).id
        self.n_structures = n

    # ----------------------------------------------------------------- theta
    def layers(self) -> list[NoiseLayer]:
        return [self._layer(k) for k in self._keys]

    def _layer(self, key: str) -> NoiseLayer:
        return cast(NoiseLayer, self.noise[key])

    def _assemble(self, per_layer: list[torch.Tensor]) -> torch.Tensor:
        cat = torch.cat(per_layer, dim=1)[:, self._perm]
        return torch.cat([cat, torch.ones(cat.shape[0], 1, dtype=cat.dtype, device=cat.device)], 1)

    def _all(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, sigma, mask) of every structure, layers concatenated, float64: one
        vectorized computation instead of one per layer (small ops dominate here)."""
        lays = self.layers()
        mu = torch.cat([lay.mu for lay in lays]).double()
        ls = torch.cat([torch.clamp(lay.log_sigma, *lay.log_sigma_range) for lay in lays])
        mask = torch.cat([lay.mask for lay in lays]).double()
        return mu, torch.exp(ls.double()), mask

    def sample_theta(self, batch: int) -> torch.Tensor:
        """theta of every structure, shape (batch, n_structures + 1) in the order of
        ``structures.groups`` plus a last column of ones, reparameterized."""
        a, b = self.interval
        mu, sigma, mask = self._all()
        u = torch.clamp(torch.rand(batch, mu.numel(), dtype=torch.float64, device=mu.device),
                        1e-12, 1 - 1e-12)
        theta = torch.exp(sample_truncnorm(mu, sigma, u, a, b)) * mask
        return self._assemble([theta.to(self.layers()[0].mu.dtype)])

    def mean_theta(self) -> torch.Tensor:
        """E[theta] * mask, shape (1, n_structures + 1) (last column: ones)."""
        a, b = self.interval
        mu, sigma, mask = self._all()
        theta = theta_mean(mu, sigma, a, b) * mask
        return self._assemble([theta.to(self.layers()[0].mu.dtype)[None]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.sample_theta(x.shape[0]) if self.training else self.mean_theta()
        self._current = theta
        try:
            return self.base(x)
        finally:
            self._current = None

    def kl(self) -> torch.Tensor:
        """Sum of KL(q || p) over every structure not yet pruned."""
        a, b = self.interval
        mu, sigma, mask = self._all()
        return (truncnorm_kl_to_uniform(mu, sigma, a, b) * mask).sum()

    def _per_group(self, values: dict[str, torch.Tensor]) -> np.ndarray:
        out = np.empty(self.n_structures)
        for i, (k, j) in enumerate(zip(self.group_slot, self.group_pos)):
            out[i] = float(values[k][j])
        return out

    @torch.no_grad()
    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) per group, in the order of ``structures.groups`` (float64)."""
        mus = {k: self._layer(k).params64()[0] for k in self._keys}
        sig = {k: self._layer(k).params64()[1] for k in self._keys}
        return self._per_group(mus), self._per_group(sig)

    @property
    def interval(self) -> tuple[float, float]:
        lay = self.layers()[0]
        return lay.a, lay.b

    def keep_mask(self) -> np.ndarray:
        """True where a structure is still in the model."""
        return self._per_group({k: self._layer(k).mask > 0 for k in self._keys}).astype(bool)

    @torch.no_grad()
    def set_keep(self, keep: Sequence[bool] | np.ndarray) -> None:
        """Set the mask of every group (False = pruned; pruned posteriors are frozen).
        A structure set back to True is restored with its frozen posterior."""
        keep_arr = self.structures.check_keep(keep)
        for k in self._keys:
            lay = self._layer(k)
            idx = [i for i, s in enumerate(self.group_slot) if s == k]
            pos = torch.as_tensor([self.group_pos[i] for i in idx])
            want = torch.as_tensor(keep_arr[idx])
            drop = torch.zeros(lay.n, dtype=torch.bool)
            drop[pos[~want]] = True
            revive = torch.zeros(lay.n, dtype=torch.bool)
            revive[pos[want]] = True
            revive &= lay.mask == 0
            lay.mu[revive] = lay.frozen_mu[revive]
            lay.log_sigma[revive] = lay.frozen_log_sigma[revive]
            lay.mask[revive] = 1.0
            lay.prune(drop)

    def freeze_pruned(self) -> None:
        for lay in self.layers():
            lay.freeze_pruned()

    # ---------------------------------------------------------------- export
    @torch.no_grad()
    def fold(self) -> nn.Module:
        """A plain copy of ``base`` (no hooks, no noise) that computes what this model
        computes in eval mode: every consumer's input columns are scaled by
        E[theta] * mask (W x diag(m) = W diag(m) x). Pruned structures then have zero
        consumer columns, so :func:`optprune.nn.apply_mask` removes them exactly."""
        model = copy.deepcopy(self.base, {id(self): None})
        named = dict(model.named_modules())
        for cname, hid in self._hook_ids.items():
            named[cname]._forward_pre_hooks.pop(hid, None)
            named[cname].__dict__.pop("_bmrs_owner", None)
            named[cname].__dict__.pop("_bmrs_src", None)
        theta = self.mean_theta()[0]
        for cname, idx in self._src.items():
            m = named[cname]
            mult = theta[idx].to(m.weight.dtype)
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(mult.view(1, -1, 1, 1))
            else:
                m.weight.mul_(mult.view(1, -1))
        return model

    def pruned_model(self, keep: Sequence[bool] | np.ndarray | None = None) -> nn.Module:
        """The physically smaller network: ``fold`` then remove the masked groups
        (``keep`` defaults to the current mask)."""
        from ..nn import apply_mask, discover

        if keep is not None:
            self.set_keep(keep)
        keep = self.keep_mask()
        folded = self.fold()
        s = discover(folded, self.structures.input_shape)
        if s.ids != self.structures.ids:
            raise ValidationError("The folded model's structures differ from the noisy model's; "
                                  "cannot map the mask.")
        return apply_mask(s, keep, inplace=True)


def attach_noise(model: nn.Module, input_shape: Sequence[int], *, exclude: Sequence[str] = (),
                 mu_init: float = 0.0, log_sigma_init: float = -2.0,
                 log_sigma_range: tuple[float, float] = (-10.0, 4.0),
                 log_theta_range: tuple[float, float] = LOG_THETA_RANGE) -> NoisyModel:
    """Wrap ``model`` (an MLP, a CNN, the ViT of optprune.nn.models, any network
    :func:`optprune.nn.discover` understands) with one multiplicative noise per prunable
    group: neurons, conv channels (residual channels included), attention heads.

    input_shape: one sample's shape without the batch dimension ((64,) or (1, 8, 8)).
    exclude: layer names left without noise (they are never pruned by BMRS).
    mu_init, log_sigma_init: the initial posterior of every structure;
    log_sigma_range: ln sigma is clamped into it (the upper end bounds how far a
    posterior can spread towards the flat prior).
    The model is used in place (its parameters are shared with the wrapper).
    """
    from ..nn import discover

    check(isinstance(model, nn.Module), "The 'model' of attach_noise", "a torch.nn.Module",
          type(model).__name__)
    if isinstance(model, NoisyModel) or any(isinstance(m, NoiseLayer) for m in model.modules()):
        raise ValidationError("The 'model' of attach_noise already carries noise layers; pass "
                              "the plain network (NoisyModel.base) instead.")
    a, b = (float(v) for v in log_theta_range)
    check(math.isfinite(a) and math.isfinite(b) and a < b and b <= 0.0,
          "The 'log_theta_range' of attach_noise", "(a, b) with a < b <= 0 (theta <= 1)",
          log_theta_range)
    structures = discover(model, input_shape, exclude=exclude)
    if not structures.groups:
        raise UnsupportedModuleError(
            f"{type(model).__name__} has no prunable structure to attach noise to (every "
            f"channel space is frozen: {dict(list(structures.frozen.items())[:3])}); BMRS needs "
            "Linear/Conv2d layers whose outputs feed other Linear/Conv2d layers.")
    sizes: dict[str, tuple[str, str, int]] = {}
    for g in structures.groups:
        k = _slot_key(g.layer, g.kind)
        lay, kind, n = sizes.get(k, (g.layer, g.kind, 0))
        sizes[k] = (lay, kind, n + 1)
    check(len(log_sigma_range) == 2 and log_sigma_range[0] < log_sigma_range[1],
          "The 'log_sigma_range' of attach_noise", "(low, high) with low < high",
          log_sigma_range)
    noise = {k: NoiseLayer(n, lay, kind, mu_init, log_sigma_init, a, b,
                            (float(log_sigma_range[0]), float(log_sigma_range[1])))
             for k, (lay, kind, n) in sizes.items()}
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for layer in noise.values():
        layer.to(device=device, dtype=dtype)
    return NoisyModel(model, structures, noise)


def require_noisy(model: Any, what: str) -> NoisyModel:
    """``model`` as a NoisyModel, or an error saying how to get one."""
    if isinstance(model, NoisyModel):
        return model
    kind = type(model).__name__
    raise ValidationError(
        f"{what} needs a model with BMRS noise layers (optprune.bayes.NoisyModel); got a plain "
        f"{kind} without them. Wrap it first: noisy = optprune.bayes.attach_noise(model, "
        "input_shape), then train it with optprune.bayes.train_svi.")
