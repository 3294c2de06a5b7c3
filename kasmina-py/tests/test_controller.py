"""The example controller: cohorts by gradient pressure, and the ablation test in EVALUATING."""

from __future__ import annotations

import torch

from kasmina import BlueprintType, KasminaLayer, LifecycleState
from kasmina.controller import Controller


def pressured_report(layer: KasminaLayer, hot: dict[int, float]) -> object:
    """Runs one forward and backward whose gradient has magnitude ``hot[i]`` on seed ``i``'s
    chunk (1 elsewhere) and ends the epoch."""
    x = torch.randn(16, layer.hidden_dim, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = torch.ones(16, layer.hidden_dim)
    c = layer.chunk_size
    for i, v in hot.items():
        g[:, i * c : (i + 1) * c] = v
    layer(x).backward(g)
    return layer.end_epoch()


def test_a_stall_germinates_the_cohort_under_most_pressure() -> None:
    layer = KasminaLayer(64, 8)
    ctl = Controller(layer, patience=2, cohort=3, max_seeds=8)
    for loss in (1.0, 1.0, 1.0):
        ctl.observe(loss)
    report = pressured_report(layer, {2: 5.0, 6: 3.0, 4: 4.0, 0: 2.0})
    ctl.step(0, report)
    germinated = sorted(e.seed for e in ctl.events if e.what == "germinated")
    assert germinated == [2, 4, 6]
    assert [layer.seed(i).lifecycle for i in germinated] == [LifecycleState.GERMINATED] * 3
    # Distinct blueprint ids, one per germination.
    assert sorted(layer.seed(i).blueprint_id for i in germinated) == [1, 2, 3]


def test_evaluation_by_ablation_keeps_a_helpful_seed_and_culls_a_harmful_one() -> None:
    torch.manual_seed(0)
    layer = KasminaLayer(8, 2)
    x = torch.randn(64, 8)
    target = x.clone()
    target[:, :4] = torch.relu(x[:, :4])  # seed 0's chunk wants a ReLU, seed 1's the identity

    def held_out() -> float:
        return torch.nn.functional.mse_loss(layer(x), target).item()

    ctl = Controller(layer, held_out=held_out, max_seeds=2)
    for i in (0, 1):
        layer.germinate(i, i + 1, BlueprintType.MLP)
        ctl.baseline[i] = 10.0  # the loss at germination, which the ablation test ignores
        for st in (LifecycleState.TRAINING, LifecycleState.GRAFTING):
            layer.transition(i, st)
        layer.set_seed_params(i, torch.ones(4), 1.0)
        layer.set_alpha(i, 1.0)
        for st in (LifecycleState.STABILIZATION, LifecycleState.EVALUATING):
            layer.transition(i, st)
    loss = held_out()
    # The ablated loss is the loss of the network with that chunk passed through unchanged.
    want = torch.nn.functional.mse_loss(torch.cat([x[:, :4], torch.relu(x[:, 4:])], dim=1), target).item()
    assert abs(ctl.ablated_loss(0) - want) < 1e-7
    ctl.observe(loss)
    ctl.step(0, layer.telemetry())
    assert ctl.fossilized == [0] and ctl.culled == [1]
    assert layer.seed(0).lifecycle == LifecycleState.FOSSILIZED and layer.seed(1).lifecycle == LifecycleState.CULLED
