"""The seed API driven from Python: a full lifecycle, automatic transitions, events, signals."""

from __future__ import annotations

import pytest
import torch

import kasmina
from conftest import random_input
from kasmina import BlueprintType, GraftingStrategy, KasminaLayer, LifecycleState, SeedSignal


def test_a_seed_goes_from_dormant_to_fossilized(device: str) -> None:
    cfg = kasmina.LayerConfig(stabilization_epochs=2, grafting=kasmina.GraftingConfig(ramp_epochs=4))
    layer = KasminaLayer(32, 4, device=device, config=cfg)
    x = random_input(8, 32, torch.float32, device)
    layer.germinate(2, 9, BlueprintType.MLP, GraftingStrategy.FIXED_RAMP)
    s = layer.seed(2)
    assert (s.lifecycle, s.blueprint_id, s.blueprint_type, s.grafting_strategy) == (
        LifecycleState.GERMINATED,
        9,
        BlueprintType.MLP,
        GraftingStrategy.FIXED_RAMP,
    )
    layer.transition(2, LifecycleState.TRAINING)
    layer.transition(2, LifecycleState.GRAFTING)
    assert layer.seed(2).alpha == 0.0
    seen = []
    for _ in range(12):
        layer(x)
        report = layer.end_epoch()
        seen.append((report[2].lifecycle, round(report[2].alpha, 6)))
        if layer.seed(2).lifecycle == LifecycleState.EVALUATING:
            break
    # Alpha ramps by 1/4 per epoch, GRAFTING -> STABILIZATION at 1, then 2 epochs of STABILIZATION.
    assert seen[:4] == [(LifecycleState.GRAFTING, a) for a in (0.0, 0.25, 0.5, 0.75)]
    assert layer.seed(2).lifecycle == LifecycleState.EVALUATING and layer.seed(2).alpha == 1.0
    layer.transition(2, LifecycleState.FINE_TUNING)
    layer.transition(2, LifecycleState.FOSSILIZED)
    assert layer.state.count(LifecycleState.FOSSILIZED) == 1
    with pytest.raises(kasmina.TransitionError):
        layer.transition(2, LifecycleState.CULLED)  # FOSSILIZED is terminal
    kinds = [(e.from_state, e.to_state) for e in layer.events() if e.seed_id == 2]
    assert kinds[0] == (LifecycleState.DORMANT, LifecycleState.GERMINATED)
    assert kinds[-1] == (LifecycleState.FINE_TUNING, LifecycleState.FOSSILIZED)
    assert (LifecycleState.GRAFTING, LifecycleState.STABILIZATION) in kinds
    assert layer.events() == []  # drained


def test_a_culled_seed_returns_to_dormant_after_its_embargo_with_fresh_parameters(device: str) -> None:
    layer = KasminaLayer(16, 2, device=device, config={"embargo_epochs": 3})
    layer.germinate(1, 4, BlueprintType.RESIDUAL)
    layer.transition(1, LifecycleState.TRAINING)
    layer.transition(1, LifecycleState.GRAFTING)
    layer.set_seed_params(1, torch.full((8,), 0.5), 2.0)
    layer.cull(1)
    for epoch in range(3):
        assert layer.seed(1).lifecycle == LifecycleState.CULLED, epoch
        with pytest.raises(kasmina.TransitionError, match="embargo"):
            layer.transition(1, LifecycleState.DORMANT)
        layer.end_epoch()
    s = layer.seed(1)
    assert s.lifecycle == LifecycleState.DORMANT and s.blueprint_id == 0
    # The core reset the parameters of the seed (SPEC 3); the module's parameters follow.
    assert torch.count_nonzero(layer.weight[1]) == 0 and layer.scale[1].item() == 1.0
    x = random_input(4, 16, torch.float32, device)
    assert torch.equal(layer(x), x)


def test_cancelled_germination_returns_to_dormant_at_the_next_epoch(device: str) -> None:
    layer = KasminaLayer(16, 2, device=device)
    layer.germinate(0, 1, BlueprintType.CONV)
    layer.cancel(0)
    assert layer.seed(0).lifecycle == LifecycleState.CANCELLED
    layer.end_epoch()
    assert layer.seed(0).lifecycle == LifecycleState.DORMANT


def test_performance_linked_alpha_follows_the_improvement_signal(device: str) -> None:
    layer = KasminaLayer(16, 2, device=device, config={"grafting": kasmina.GraftingConfig(ramp_epochs=10)})
    for i in range(2):
        layer.germinate(i, 1, BlueprintType.MLP, GraftingStrategy.PERFORMANCE_LINKED)
        layer.transition(i, LifecycleState.TRAINING)
        layer.transition(i, LifecycleState.GRAFTING)
    layer.end_epoch({0: SeedSignal(improvement=1.0), 1: (-1.0, 0.0)})
    # alpha += (1/10) * 2 * sigmoid(10 * improvement)
    assert layer.seed(0).alpha == pytest.approx(0.2 * (1 / (1 + torch.exp(torch.tensor(-10.0)).item())), rel=1e-6)
    assert layer.seed(1).alpha == pytest.approx(0.2 * (1 / (1 + torch.exp(torch.tensor(10.0)).item())), rel=1e-4)


def test_drift_controlled_alpha_holds_while_drift_is_high(device: str) -> None:
    layer = KasminaLayer(16, 2, device=device)
    layer.germinate(0, 1, BlueprintType.MLP, GraftingStrategy.DRIFT_CONTROLLED)
    layer.transition(0, LifecycleState.TRAINING)
    layer.transition(0, LifecycleState.GRAFTING)
    layer.end_epoch([SeedSignal(drift=0.5), SeedSignal()])
    assert layer.seed(0).alpha == 0.0
    layer.end_epoch([SeedSignal(drift=0.01), SeedSignal()])
    assert layer.seed(0).alpha == pytest.approx(1 / 30)


def test_the_report_json_has_the_cli_shape(device: str) -> None:
    import json

    layer = KasminaLayer(16, 4, device=device)
    layer(random_input(3, 16, torch.float32, device))
    doc = json.loads(layer.end_epoch().to_json())
    assert doc["epoch"] == 0 and len(doc["seeds"]) == 4
    first = doc["seeds"][0]
    for key in (
        "seed_id",
        "lifecycle",
        "count",
        "dead",
        "variance",
        "dead_ratio",
        "min",
        "max",
        "nonfinite",
        "grad_norm",
        "mean",
        "snr",
    ):
        assert key in first, key
    assert first["lifecycle"] == "DORMANT" and first["count"] == 12


def test_lifecycle_forward_modes_follow_the_spec_table() -> None:
    modes = {s: s.forward_mode for s in LifecycleState}
    assert [s for s, m in modes.items() if m == "blend"] == [
        LifecycleState.GRAFTING,
        LifecycleState.STABILIZATION,
        LifecycleState.EVALUATING,
        LifecycleState.FINE_TUNING,
    ]
    assert modes[LifecycleState.FOSSILIZED] == "blueprint"
    assert [int(v) for v in BlueprintType] == [0, 1, 2, 3]
    assert [int(v) for v in GraftingStrategy] == [0, 1, 2, 3]
    assert [int(v) for v in LifecycleState] == list(range(11))
