"""CUDA-only behaviour: PyTorch's streams, CUDA-graph capture of a training step."""

from __future__ import annotations

import pytest
import torch

from conftest import mixed_layer, random_input, rel_l2
from kasmina import BlueprintType, KasminaLayer, reference


def test_the_layer_runs_on_the_current_side_stream(cuda: str) -> None:
    layer = mixed_layer(cuda, torch.float32, BlueprintType.MLP)
    x = random_input(512, layer.hidden_dim, torch.float32, cuda)
    want = reference.forward(x.double().cpu(), reference.plan_of(layer))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = layer(x)
        z = y * 2  # PyTorch's own kernel after ours, on the same stream
    torch.cuda.current_stream().wait_stream(side)
    assert rel_l2(z / 2, want) <= 1e-5
    # Back on the default stream, nothing lost: the statistics of both calls.
    layer(x)
    assert layer.end_epoch()[0].count == 2 * 512 * layer.chunk_size


def test_a_captured_training_step_replays_like_eager(cuda: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), KasminaLayer(64, 8), torch.nn.Linear(64, 4)).to(cuda)
    kl = model[1]
    for seed, ty in ((1, BlueprintType.MLP), (4, BlueprintType.ATTENTION)):
        kl.germinate(seed, 1, ty)
        kl.transition(seed, 2)
        kl.transition(seed, 3)
        kl.set_alpha(seed, 0.5)
        kl.set_seed_params(seed, torch.full((8,), 0.3), 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 16, device=cuda)
    t = torch.randn(32, 4, device=cuda)
    reference_model = [p.detach().clone() for p in model.parameters()]

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = torch.nn.functional.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up: kernels compiled, launches tuned, memory sized
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    losses = []
    for _ in range(5):
        graph.replay()
        losses.append(static_loss.item())
    # The same 8 steps (3 + capture-time 0 + 5) eagerly, from the same start.
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), reference_model):
            p.copy_(p0)
    eager = [step().item() for _ in range(8)]
    assert losses == pytest.approx(eager[3:], rel=1e-4)
