"""The Kasmina layer in plain PyTorch, straight from the SPEC (sections 4, 5 and 7).

Written for clarity, not speed: the oracle of the package's tests (in float64, with the
gradients of SPEC 7 from autograd) and the peer of its benchmark (in the activation's own
precision, under ``torch.compile``). It reads a :class:`kasmina.KasminaLayer`'s state through
:func:`plan_of` and never calls the native layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .enums import BlueprintType, LifecycleState

__all__ = ["Moments", "Plan", "forward", "gradients", "moments", "plan_of"]

# The blueprint types as plain ints (what the tensors hold; torch.compile compares tensors with ints).
_RES, _ATT, _MLP = int(BlueprintType.RESIDUAL), int(BlueprintType.ATTENTION), int(BlueprintType.MLP)


@dataclass(frozen=True)
class Plan:
    """Per-seed tensors of one layer state (``S`` seeds of ``C`` columns)."""

    mode: Tensor
    """``[S]`` int: 0 identity, 1 blend, 2 blueprint (FOSSILIZED)."""
    alpha: Tensor
    """``[S]``: ``clamp(alpha, 0, 1)`` for blend seeds, 1 for FOSSILIZED, 0 otherwise."""
    btype: Tensor
    """``[S]`` int: the blueprint type (SPEC 4)."""
    weight: Tensor
    """``[S, C]`` blueprint weights."""
    scale: Tensor
    """``[S]`` blueprint scales."""
    lo: Tensor
    """``[S]`` strict-mode lower clamp bound (NaN: no clamping)."""
    hi: Tensor
    """``[S]`` strict-mode upper clamp bound (NaN: no clamping)."""
    dead_eps: float

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Plan:
        """The plan with its float tensors in ``dtype`` on ``device``."""
        f = {k: getattr(self, k).to(device, dtype) for k in ("alpha", "weight", "scale", "lo", "hi")}
        return Plan(mode=self.mode.to(device), btype=self.btype.to(device), dead_eps=self.dead_eps, **f)


def plan_of(layer: torch.nn.Module) -> Plan:
    """The plan of a :class:`kasmina.KasminaLayer`'s current state and parameters."""
    st = layer.state  # type: ignore[attr-defined]
    cfg = st.config
    s = st.num_seeds
    mode = torch.zeros(s, dtype=torch.long)
    alpha = torch.zeros(s, dtype=torch.float64)
    lo = torch.full((s,), float("nan"), dtype=torch.float64)
    hi = torch.full((s,), float("nan"), dtype=torch.float64)
    for i, seed in enumerate(st.seeds):
        fm = LifecycleState(seed.lifecycle).forward_mode
        mode[i] = {"identity": 0, "blend": 1, "blueprint": 2}[fm]
        alpha[i] = 1.0 if fm == "blueprint" else (min(max(seed.alpha, 0.0), 1.0) if fm == "blend" else 0.0)
        if (
            fm != "identity"
            and cfg.stability == "strict"
            and seed.clamp_mean is not None
            and seed.clamp_std is not None
        ):
            # The band is computed in f32 exactly as the core does (kasmina_core::state::clamp_bounds).
            m = torch.tensor(seed.clamp_mean, dtype=torch.float32)
            half = torch.tensor(cfg.strict_k, dtype=torch.float32) * torch.tensor(seed.clamp_std, dtype=torch.float32)
            lo[i], hi[i] = float(m - half), float(m + half)
    return Plan(
        mode=mode,
        alpha=alpha,
        btype=torch.tensor([int(seed.blueprint_type) for seed in st.seeds], dtype=torch.long),
        weight=layer.weight.detach().to("cpu", torch.float64),  # type: ignore[attr-defined]
        scale=layer.scale.detach().to("cpu", torch.float64),  # type: ignore[attr-defined]
        lo=lo,
        hi=hi,
        dead_eps=cfg.dead_eps,
    )


def forward(x: Tensor, plan: Plan, *, weight: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``y = layer(x)`` (SPEC 5.1, 5.3) computed in ``x``'s dtype; ``x`` is ``[B, H]``.

    ``weight`` / ``scale`` override the plan's (for autograd through the parameters).
    """
    b, h = x.shape
    w = plan.weight if weight is None else weight
    sc = plan.scale if scale is None else scale
    s, c = w.shape
    xs = x.reshape(b, s, c)
    sv = sc.reshape(1, s, 1)
    wv = w.reshape(1, s, c)
    p = torch.softmax(w, dim=1).reshape(1, s, c)
    t_res = xs + wv * sv
    t_att = xs * p
    t_mlp = torch.relu(xs * wv) * sv
    xm1 = torch.nn.functional.pad(xs, (1, 0))[..., :c]
    xm2 = torch.nn.functional.pad(xs, (2, 0))[..., :c]
    zero = torch.zeros_like(sv)
    w0, w1, w2 = (w[:, k].reshape(1, s, 1) if c > k else zero for k in range(3))
    t_conv = sv * (w0 * xs + w1 * xm1 + w2 * xm2)
    ty = plan.btype.reshape(1, s, 1)
    t = torch.where(ty == _RES, t_res, torch.where(ty == _ATT, t_att, torch.where(ty == _MLP, t_mlp, t_conv)))
    a = plan.alpha.to(x.dtype).reshape(1, s, 1)
    md = plan.mode.reshape(1, s, 1)
    out = torch.where(md == 2, t, (1 - a) * xs + a * t)
    lo = plan.lo.to(x.dtype).reshape(1, s, 1)
    hi = plan.hi.to(x.dtype).reshape(1, s, 1)
    clamped = torch.minimum(torch.maximum(out, lo), hi)
    out = torch.where(torch.isnan(lo), out, clamped)
    return torch.where(md == 0, xs, out).reshape(b, h)


def gradients(x: Tensor, g: Tensor, plan: Plan) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dscale)`` of SPEC 7 in float64, by autograd through :func:`forward`."""
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    w64 = plan.weight.detach().to(x64.device, torch.float64).requires_grad_(True)
    s64 = plan.scale.detach().to(x64.device, torch.float64).requires_grad_(True)
    p64 = plan.to(x64.device, torch.float64)
    y = forward(x64, p64, weight=w64, scale=s64)
    dx, dw, ds = torch.autograd.grad(y, (x64, w64, s64), g.detach().to(torch.float64))
    return dx, dw, ds


@dataclass(frozen=True)
class Moments:
    """Per-seed statistics of the finite elements of each chunk (SPEC 5.2), in float64."""

    count: Tensor
    mean: Tensor
    m2: Tensor
    min: Tensor
    max: Tensor
    dead: Tensor
    nonfinite: Tensor

    @property
    def variance(self) -> Tensor:
        """``m2 / count`` (0 where nothing was seen)."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp(min=1), torch.zeros_like(self.m2))


def moments(x: Tensor, num_seeds: int, dead_eps: float) -> Moments:
    """The statistics of ``x`` (``[B, H]``, any dtype) per seed, two-pass in float64."""
    b, h = x.shape
    xs = x.to(torch.float64).reshape(b, num_seeds, h // num_seeds)
    finite = torch.isfinite(xs)
    xz = torch.where(finite, xs, torch.zeros_like(xs))
    count = finite.sum(dim=(0, 2)).to(torch.float64)
    mean = torch.where(count > 0, xz.sum(dim=(0, 2)) / count.clamp(min=1), torch.zeros_like(count))
    dev = torch.where(finite, xs - mean.reshape(1, -1, 1), torch.zeros_like(xs))
    inf = torch.full_like(xs, float("inf"))
    return Moments(
        count=count,
        mean=mean,
        m2=(dev * dev).sum(dim=(0, 2)),
        min=torch.where(finite, xs, inf).amin(dim=(0, 2)),
        max=torch.where(finite, xs, -inf).amax(dim=(0, 2)),
        dead=(finite & (xs.abs() < dead_eps)).sum(dim=(0, 2)).to(torch.float64),
        nonfinite=(~finite).sum(dim=(0, 2)).to(torch.float64),
    )
