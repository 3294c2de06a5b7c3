"""torch.compile(fullgraph=True) of a model with the layer: no graph break, same results as eager."""

from __future__ import annotations

import pytest
import torch

import kasmina
from conftest import random_input, rel_l2
from kasmina import BlueprintType, KasminaLayer, LifecycleState
from kasmina._ops import backward_op, forward_op


class Host(torch.nn.Module):
    """Linear -> KasminaLayer -> GELU -> Linear."""

    def __init__(self, device: str, h: int = 64, s: int = 8) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(12, h)
        self.seeds = KasminaLayer(h, s, device=device)
        self.out = torch.nn.Linear(h, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.gelu(self.seeds(self.inp(x))))


def make_host(device: str) -> Host:
    torch.manual_seed(0)
    m = Host(device).to(device)
    types = [BlueprintType.RESIDUAL, BlueprintType.ATTENTION, BlueprintType.MLP, BlueprintType.CONV]
    for i, ty in enumerate(types):
        seed = 2 * i + 1
        m.seeds.germinate(seed, 1 + i, ty)
        m.seeds.transition(seed, LifecycleState.TRAINING)
        m.seeds.transition(seed, LifecycleState.GRAFTING)
        m.seeds.set_alpha(seed, 0.3 + 0.2 * i)
        m.seeds.set_seed_params(seed, torch.randn(8) * 0.5, 1.1)
    return m


def step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    y = model(x)
    torch.nn.functional.mse_loss(y, t).backward()
    return y.detach(), [p.grad.detach().clone() for p in model.parameters()]


def test_compiled_model_matches_eager_without_graph_breaks(device: str) -> None:
    import torch._dynamo as dynamo

    eager = make_host(device)
    compiled_host = make_host(device)
    compiled = torch.compile(compiled_host, fullgraph=True)
    dynamo.utils.counters.clear()
    x = random_input(32, 12, torch.float32, device, seed=3)
    t = random_input(32, 3, torch.float32, device, seed=4)
    for _ in range(2):
        ye, ge = step(eager, x, t)
        yc, gc = step(compiled, x, t)
        assert rel_l2(yc, ye) <= 1e-5
        for a, b in zip(gc, ge):
            assert rel_l2(a, b) <= 1e-5
    assert dict(dynamo.utils.counters["graph_break"]) == {}
    # The compiled graph called the layer once per forward and once per backward: the
    # telemetry equals eager's, count for count (the compiled GELU and Linear round a little
    # differently, so the statistics agree to f32 precision).
    re_, rc = eager.seeds.end_epoch(), compiled_host.seeds.end_epoch()
    for a, b in zip(re_.seeds, rc.seeds):
        assert a.count == b.count == 2 * 32 * 8
        assert b.variance == pytest.approx(a.variance, rel=1e-5)
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-5) and a.grad_norm > 0


def test_custom_ops_pass_opcheck(device: str) -> None:
    layer = KasminaLayer(32, 4, device=device)
    layer.germinate(1, 1, BlueprintType.MLP)
    layer.transition(1, LifecycleState.TRAINING)
    layer.transition(1, LifecycleState.GRAFTING)
    layer.set_alpha(1, 0.5)
    layer.set_seed_params(1, torch.linspace(-1, 1, 8), 0.7)
    x = random_input(6, 32, torch.float32, device).requires_grad_(True)
    g = random_input(6, 32, torch.float32, device, seed=2)
    w, s = layer.weight, layer.scale
    torch.library.opcheck(forward_op, (x, w, s, layer._handle))
    torch.library.opcheck(backward_op, (x.detach(), g, w.detach(), s.detach(), layer._handle))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_compiled_layer_alone_in_half_precision(device: str, dtype: torch.dtype) -> None:
    layer = KasminaLayer(64, 8, device=device, dtype=dtype)
    layer.germinate(0, 1, BlueprintType.ATTENTION)
    layer.transition(0, LifecycleState.TRAINING)
    layer.transition(0, LifecycleState.GRAFTING)
    layer.set_alpha(0, 0.5)
    fn = torch.compile(lambda x: layer(x) * 2, fullgraph=True)
    x = random_input(16, 64, dtype, device)
    with torch.no_grad():
        assert torch.equal(fn(x), layer(x) * 2)
    assert kasmina.KasminaError  # the package imported its errors for the compiled path too
