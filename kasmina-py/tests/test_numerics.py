"""Forward, telemetry and backward against the float64 reference (SPEC 4, 5, 7, 8)."""

from __future__ import annotations

import math

import pytest
import torch

import kasmina
from conftest import DTYPES, MODES, TOLERANCE, mixed_layer, random_input, rel_l2
from kasmina import BlueprintType, reference

TYPES = list(BlueprintType)


def chunks(t: torch.Tensor, s: int, i: int) -> torch.Tensor:
    """Seed ``i``'s columns of ``t`` ([rows, H])."""
    c = t.shape[1] // s
    return t[:, i * c : (i + 1) * c]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("btype", TYPES, ids=lambda t: t.name)
def test_forward_matches_reference_in_every_mode(device: str, dtype: torch.dtype, btype: BlueprintType) -> None:
    layer = mixed_layer(device, dtype, btype)
    x = random_input(37, layer.hidden_dim, dtype, device)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    plan = reference.plan_of(layer)
    want = reference.forward(x.double().cpu(), plan)
    s = layer.num_seeds
    for i, mode in enumerate(MODES):
        got_i, want_i = chunks(y, s, i), chunks(want, s, i)
        if mode.forward_mode == "identity":
            # Identity seeds are the input, bit for bit.
            assert torch.equal(
                got_i.cpu().view(torch.int16 if dtype != torch.float32 else torch.int32),
                chunks(x, s, i).cpu().view(torch.int16 if dtype != torch.float32 else torch.int32),
            ), mode
        else:
            err = rel_l2(got_i, want_i)
            assert err <= TOLERANCE[dtype], f"{mode.name} {btype.name}: {err:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_identity_layer_is_bit_exact_with_nan_payloads_and_infinities(device: str, dtype: torch.dtype) -> None:
    layer = kasmina.KasminaLayer(64, 4, device=device, dtype=dtype)
    x = random_input(9, 64, dtype, device)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    raw = x.view(bits).clone()
    raw[0, 0] = 0x7FC00123 if dtype == torch.float32 else 0x7E01  # a NaN with a payload
    raw[1, 5] = raw[1, 5] | (1 << (31 if dtype == torch.float32 else 15))
    x = raw.view(dtype)
    x[2, 7] = float("inf")
    x[3, 8] = float("-inf")
    y = layer(x)
    assert torch.equal(y.view(bits), x.view(bits))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("btype", TYPES, ids=lambda t: t.name)
def test_telemetry_matches_reference_moments(device: str, dtype: torch.dtype, btype: BlueprintType) -> None:
    layer = mixed_layer(device, dtype, btype)
    xs = [random_input(rows, layer.hidden_dim, dtype, device, seed=k) for k, rows in enumerate((5, 64, 3))]
    xs[1][4, 3] = float("nan")
    xs[1][7, 20] = float("inf")
    xs[2][0, :] = 0.0  # dead elements
    with torch.no_grad():
        for x in xs:
            layer(x)
    alpha = [s.alpha for s in layer.state.seeds]
    report = layer.end_epoch()
    m = reference.moments(torch.cat([x.cpu() for x in xs]), layer.num_seeds, layer.config.dead_eps)
    assert report.epoch == 0 and layer.epoch == 1 and len(report) == layer.num_seeds
    for i, r in enumerate(report.seeds):
        assert r.seed_id == i and r.lifecycle == MODES[i] and r.alpha == pytest.approx(alpha[i])
        assert r.count == int(m.count[i]) and r.dead == int(m.dead[i]) and r.nonfinite == int(m.nonfinite[i])
        assert r.min == pytest.approx(float(m.min[i]), rel=1e-6) and r.max == pytest.approx(float(m.max[i]), rel=1e-6)
        assert r.variance == pytest.approx(float(m.variance[i]), rel=1e-4)
        assert r.mean == pytest.approx(float(m.mean[i]), rel=2e-3, abs=1e-3)  # the f16 tier
        seen = m.count[i] + m.nonfinite[i]
        assert r.dead_ratio == pytest.approx(float(m.dead[i] / seen), rel=1e-6)
        snr = abs(float(m.mean[i])) / math.sqrt(float(m.variance[i]) + layer.config.snr_eps)
        assert r.snr == pytest.approx(snr, rel=2e-3, abs=1e-3)
        assert r.grad_norm == 0.0  # no backward ran
    # The accumulators were reset: the next epoch starts empty.
    assert all(r.count == 0 and r.min == math.inf and r.max == -math.inf for r in layer.telemetry().seeds)


def test_variance_is_accurate_when_mean_dwarfs_std(device: str) -> None:
    layer = kasmina.KasminaLayer(32, 2, device=device)
    gen = torch.Generator().manual_seed(3)
    x = (1e4 + torch.randn(4096, 32, generator=gen)).to(device)
    layer(x)
    r = layer.end_epoch()
    m = reference.moments(x.cpu(), 2, 1e-6)
    for i in range(2):
        assert r[i].variance == pytest.approx(float(m.variance[i]), rel=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("btype", TYPES, ids=lambda t: t.name)
def test_backward_matches_reference_gradients(device: str, dtype: torch.dtype, btype: BlueprintType) -> None:
    layer = mixed_layer(device, dtype, btype, seed=5)
    x = random_input(29, layer.hidden_dim, dtype, device, seed=7).requires_grad_(True)
    g = random_input(29, layer.hidden_dim, dtype, device, seed=8)
    y = layer(x)
    y.backward(g)
    plan = reference.plan_of(layer)
    dx, dw, ds = reference.gradients(x.detach().cpu(), g.cpu(), plan)
    tol = TOLERANCE[dtype]
    assert x.grad is not None and layer.weight.grad is not None and layer.scale.grad is not None
    assert x.grad.dtype == dtype and layer.weight.grad.dtype == torch.float32
    assert rel_l2(x.grad, dx) <= tol
    s = layer.num_seeds
    for i, mode in enumerate(MODES):
        if mode.forward_mode == "identity":
            # dx = g bit for bit, and no parameter gradient (SPEC 7).
            assert torch.equal(chunks(x.grad, s, i), chunks(g, s, i))
            assert torch.count_nonzero(layer.weight.grad[i]) == 0 and layer.scale.grad[i] == 0
        else:
            # The parameter sums are f32 over rows of values rounded to the dtype.
            assert rel_l2(layer.weight.grad[i], dw[i]) <= max(tol, 1e-5), f"{mode.name} dweights"
            assert abs(layer.scale.grad[i].item() - ds[i].item()) <= max(tol, 1e-5) * max(1.0, abs(ds[i].item()))
    r = layer.end_epoch()
    gsq = chunks(g.double().cpu() ** 2, 1, 0).reshape(29, s, -1).sum(dim=(0, 2))
    for i in range(s):
        assert r[i].grad_norm == pytest.approx(math.sqrt(float(gsq[i])), rel=1e-5)


def test_strict_mode_clamps_blend_outputs_and_zeroes_their_gradient(device: str) -> None:
    cfg = kasmina.LayerConfig(stability="strict", strict_k=0.5)
    layer = mixed_layer(device, torch.float32, BlueprintType.RESIDUAL, config=cfg)
    warm = random_input(64, layer.hidden_dim, torch.float32, device, seed=11)
    layer(warm)
    layer.end_epoch()  # sets the clamp band of every seed that saw data (SPEC 6)
    st = layer.state
    assert all(s.clamp_mean is not None for s in st.seeds if s.lifecycle.forward_mode != "identity")
    x = random_input(16, layer.hidden_dim, torch.float32, device, seed=12, spread=4.0).requires_grad_(True)
    g = random_input(16, layer.hidden_dim, torch.float32, device, seed=13)
    y = layer(x)
    y.backward(g)
    plan = reference.plan_of(layer)
    want = reference.forward(x.detach().double().cpu(), plan)
    assert rel_l2(y, want) <= 1e-5
    dx, dw, _ = reference.gradients(x.detach().cpu(), g.cpu(), plan)
    assert rel_l2(x.grad, dx) <= 1e-5
    assert rel_l2(layer.weight.grad, dw) <= 1e-5
    # Some elements were clamped (else the test proves nothing) and identity seeds never are.
    lo, hi = plan.lo, plan.hi
    active = [i for i, m in enumerate(MODES) if m.forward_mode != "identity"]
    clamped = sum(
        int(((chunks(y, len(MODES), i) <= lo[i] + 1e-6) | (chunks(y, len(MODES), i) >= hi[i] - 1e-6)).sum())
        for i in active
    )
    assert clamped > 0
    assert torch.equal(chunks(y, len(MODES), 0), chunks(x, len(MODES), 0))


def test_leading_dimensions_are_flattened(device: str) -> None:
    layer = mixed_layer(device, torch.float32, BlueprintType.MLP)
    x = random_input(24, layer.hidden_dim, torch.float32, device).reshape(2, 3, 4, layer.hidden_dim)
    y = layer(x)
    assert y.shape == x.shape
    flat = layer(x.reshape(-1, layer.hidden_dim))
    assert torch.equal(y.reshape(-1, layer.hidden_dim), flat)


def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(device: str) -> None:
    layer = mixed_layer(device, torch.float32, BlueprintType.CONV)
    x = torch.empty(0, layer.hidden_dim, device=device, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, layer.hidden_dim)
    y.sum().backward()
    assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) == 0
    assert layer.telemetry()[0].count == 0


def test_optimizer_updates_reach_the_next_forward(device: str) -> None:
    layer = mixed_layer(device, torch.float32, BlueprintType.ATTENTION, seed=2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = random_input(16, layer.hidden_dim, torch.float32, device, seed=4)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()
        # The forward computes with the parameters as they are now, in place-updated.
        want = reference.forward(x.double().cpu(), reference.plan_of(layer))
        with torch.no_grad():
            assert rel_l2(layer(x), want) <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_dormant_layer_in_training_is_the_identity_with_its_telemetry(device: str, dtype: torch.dtype) -> None:
    # Every seed dormant: y = x bit for bit (a new tensor), dx = g bit for bit, the statistics
    # of x and Σ g² gathered, and no parameter gradient: the layer leaves its parameters out of
    # the graph while every seed is an identity.
    layer = kasmina.KasminaLayer(96, 6, device=device, dtype=dtype)
    x = random_input(2 * 3 * 11, 96, dtype, device, seed=21).reshape(2, 33, 96)
    x[0, 4, 7] = float("nan")
    x = x.requires_grad_(True)
    g = random_input(66, 96, dtype, device, seed=22).reshape(2, 33, 96)
    y = layer(x)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert y.shape == x.shape and y.data_ptr() != x.data_ptr()
    assert torch.equal(y.detach().view(bits), x.detach().view(bits))
    y.backward(g)
    assert x.grad is not None and torch.equal(x.grad.view(bits), g.view(bits))
    assert layer.weight.grad is None and layer.scale.grad is None
    r = layer.end_epoch()
    rows = x.detach().reshape(-1, 96).cpu()
    m = reference.moments(rows, 6, layer.config.dead_eps)
    gsq = (g.double().cpu().reshape(-1, 6, 16) ** 2).sum(dim=(0, 2))
    for i in range(6):
        assert r[i].count == int(m.count[i]) and r[i].nonfinite == int(m.nonfinite[i])
        assert r[i].variance == pytest.approx(float(m.variance[i]), rel=1e-4)
        assert r[i].grad_norm == pytest.approx(math.sqrt(float(gsq[i])), rel=1e-5)
    assert r[0].nonfinite == 1


def test_parameters_take_gradients_again_once_a_seed_is_active(device: str) -> None:
    layer = kasmina.KasminaLayer(32, 2, device=device)
    x = random_input(8, 32, torch.float32, device, seed=3).requires_grad_(True)
    layer(x).sum().backward()
    layer.germinate(1, 7, BlueprintType.RESIDUAL)
    layer.transition(1, kasmina.LifecycleState.TRAINING)
    layer.transition(1, kasmina.LifecycleState.GRAFTING)
    layer.set_alpha(1, 0.5)
    layer.zero_grad()
    layer(x).sum().backward()
    assert layer.scale.grad is not None and layer.weight.grad is not None
    # RESIDUAL: dw_j = a * s * Σ_rows g_j = 0.5 * 8 rows for g = 1 (SPEC 7); seed 0 stays at 0.
    assert torch.equal(layer.weight.grad[0].cpu(), torch.zeros(16))
    assert torch.allclose(layer.weight.grad[1].cpu(), torch.full((16,), 4.0))
