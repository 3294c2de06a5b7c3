"""The layer as a torch.nn.Module: zero copies, parameters, state dicts, pickling, dtype moves."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import kasmina
from conftest import mixed_layer, random_input, rel_l2
from kasmina import BlueprintType, KasminaLayer, LifecycleState, reference


def allocations(fn) -> list[int]:  # type: ignore[no-untyped-def]
    """Bytes of every host tensor allocation ``fn`` makes (leaf allocator calls only)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sorted(
        e.cpu_memory_usage
        for e in prof.events()
        if e.name in ("aten::empty", "aten::empty_strided") and e.cpu_memory_usage > 0
    )


def test_cpu_forward_and_backward_allocate_only_their_outputs() -> None:
    layer = mixed_layer("cpu", torch.float32, BlueprintType.ATTENTION)
    x = random_input(64, layer.hidden_dim, torch.float32, "cpu").requires_grad_(True)
    nbytes = x.numel() * 4
    layer(x)  # warm up
    out: dict[str, torch.Tensor] = {}

    def fwd() -> None:
        out["y"] = layer(x)

    # One allocation of the input's size: the output. No staging copy of x.
    assert allocations(fwd) == [nbytes]
    y = out["y"]
    assert y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    g = torch.randn_like(y)
    # The backward allocates dx and the two parameter gradients, nothing else.
    assert allocations(lambda: y.backward(g)) == sorted([nbytes, layer.weight.numel() * 4, layer.scale.numel() * 4])


def test_cuda_forward_and_backward_allocate_only_their_outputs(cuda: str) -> None:
    layer = mixed_layer(cuda, torch.bfloat16, BlueprintType.MLP)
    x = random_input(256, layer.hidden_dim, torch.bfloat16, cuda).requires_grad_(True)
    layer(x).sum().backward()  # warm up (kernels compiled, launch configurations tuned)
    torch.cuda.synchronize()
    stats = torch.cuda.memory_stats
    before = stats()
    y = layer(x)
    mid = stats()
    assert mid["allocation.all.allocated"] - before["allocation.all.allocated"] == 1
    assert mid["allocated_bytes.all.allocated"] - before["allocated_bytes.all.allocated"] == y.numel() * 2
    y.backward(torch.ones_like(y))
    after = stats()
    # ones_like, dx, dweights, dscales.
    assert after["allocation.all.allocated"] - mid["allocation.all.allocated"] == 4


def test_misaligned_cuda_views_are_copied_not_faulted(cuda: str) -> None:
    layer = mixed_layer(cuda, torch.float16, BlueprintType.RESIDUAL)
    base = random_input(9, layer.hidden_dim + 1, torch.float16, cuda).reshape(-1)
    x = base[1 : 1 + 8 * layer.hidden_dim].reshape(8, layer.hidden_dim)  # starts 2 bytes into the storage
    assert x.is_contiguous() and x.data_ptr() % 16 != 0
    want = reference.forward(x.double().cpu(), reference.plan_of(layer))
    assert rel_l2(layer(x), want) <= 2e-3


def test_parameters_are_float32_module_parameters(device: str) -> None:
    layer = KasminaLayer(48, 6, device=device, dtype=torch.bfloat16)
    names = dict(layer.named_parameters())
    assert set(names) == {"weight", "scale"}
    assert layer.weight.shape == (6, 8) and layer.scale.shape == (6,)
    assert layer.weight.dtype == torch.float32 and torch.count_nonzero(layer.weight) == 0
    assert torch.equal(layer.scale.cpu(), torch.ones(6))


def test_state_dict_round_trips_parameters_and_lifecycle(device: str) -> None:
    a = mixed_layer(device, torch.float32, BlueprintType.CONV, seed=3)
    a.end_epoch()
    sd = a.state_dict()
    assert set(sd) == {"weight", "scale", "_extra_state"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    sd2 = torch.load(buf, weights_only=True)
    b = KasminaLayer(a.hidden_dim, a.num_seeds, device=device)
    b.load_state_dict(sd2)
    assert b.checksum() == a.checksum() and b.epoch == 1
    assert [s.lifecycle for s in b.state.seeds] == [s.lifecycle for s in a.state.seeds]
    x = random_input(7, a.hidden_dim, torch.float32, device)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_pickle_and_deepcopy_give_an_independent_equal_layer(device: str) -> None:
    a = mixed_layer(device, torch.float32, BlueprintType.ATTENTION, seed=4)
    for b in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        assert b.checksum() == a.checksum() and b._handle != a._handle
        x = random_input(5, a.hidden_dim, torch.float32, device)
        with torch.no_grad():
            assert torch.equal(a(x), b(x))
        b.transition(3, LifecycleState.CULLED)
        assert a.seed(3).lifecycle != LifecycleState.CULLED


def test_to_dtype_changes_the_activation_dtype_and_keeps_float32_parameters(device: str) -> None:
    layer = mixed_layer(device, torch.float32, BlueprintType.MLP)
    w = layer.weight.detach().clone()
    layer.to(torch.bfloat16)
    assert layer.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    assert torch.equal(layer.weight.detach(), w)
    x = random_input(6, layer.hidden_dim, torch.bfloat16, device)
    assert rel_l2(layer(x), reference.forward(x.double().cpu(), reference.plan_of(layer))) <= 1e-2
    layer.float()
    assert layer.dtype == torch.float32


def test_moving_between_devices_keeps_the_state(cuda: str) -> None:
    layer = mixed_layer("cpu", torch.float32, BlueprintType.RESIDUAL, seed=6)
    crc = layer.checksum()
    layer.to(cuda)
    assert layer.device.type == "cuda" and layer.weight.is_cuda
    assert layer.checksum() == crc and layer.device_checksum() == crc
    x = random_input(4, layer.hidden_dim, torch.float32, cuda)
    assert rel_l2(layer(x), reference.forward(x.double().cpu(), reference.plan_of(layer))) <= 1e-5
    layer.cpu()
    assert layer.device.type == "cpu" and layer.checksum() == crc


def test_device_checksum_equals_the_host_checksum_after_training(device: str) -> None:
    layer = mixed_layer(device, torch.float32, BlueprintType.MLP)
    opt = torch.optim.Adam(layer.parameters(), lr=0.01)
    x = random_input(16, layer.hidden_dim, torch.float32, device)
    for _ in range(2):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
    layer(x)
    assert layer.device_checksum() == layer.checksum()
    layer.end_epoch()
    assert layer.device_checksum() == layer.checksum()


@pytest.mark.parametrize("btype", list(BlueprintType))
def test_the_device_holds_the_constants_the_host_derives(device: str, btype: BlueprintType, tmp_path) -> None:
    # Every upload (parameters, transitions, the end of an epoch) is checked by the layer itself
    # against the host's kernel checksum; none of these calls may raise, and the two agree after.
    config = kasmina.LayerConfig(stability="strict")
    layer = mixed_layer(device, torch.float32, btype, seed=7, config=config)
    assert layer.device_kernel_checksum() == layer.kernel_checksum()
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    x = random_input(16, layer.hidden_dim, torch.float32, device)
    for _ in range(2):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
    before = layer.kernel_checksum()
    assert layer.device_kernel_checksum() == before
    layer.end_epoch()  # strict mode: clamp bands from the telemetry; alpha steps
    assert layer.kernel_checksum() != before
    assert layer.device_kernel_checksum() == layer.kernel_checksum()
    layer.save(tmp_path / "s.safetensors")
    loaded = KasminaLayer.load(tmp_path / "s.safetensors", device=device)
    assert loaded.kernel_checksum() == layer.kernel_checksum() == loaded.device_kernel_checksum()


def test_layers_inside_a_model_train_with_a_torch_optimizer(device: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), KasminaLayer(32, 4, device="cpu"), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    ).to(device)
    kl = model[1]
    kl.germinate(1, 1, BlueprintType.RESIDUAL)
    kl.transition(1, LifecycleState.TRAINING)
    kl.transition(1, LifecycleState.GRAFTING)
    kl.set_alpha(1, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 8, device=device)
    t = torch.randn(64, 1, device=device)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.count_nonzero(kl.weight[1]) > 0 and torch.count_nonzero(kl.weight[0]) == 0
    assert kl.end_epoch()[1].grad_norm > 0


def test_distributed_data_parallel_trains_the_layer_like_a_plain_module(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_available():
        pytest.skip("this PyTorch has no torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:

        def build() -> torch.nn.Module:
            torch.manual_seed(0)
            m = torch.nn.Sequential(torch.nn.Linear(8, 32), KasminaLayer(32, 4), torch.nn.Linear(32, 2))
            kl = m[1]
            kl.germinate(2, 1, BlueprintType.MLP)
            kl.transition(2, LifecycleState.TRAINING)
            kl.transition(2, LifecycleState.GRAFTING)
            kl.set_alpha(2, 0.5)
            kl.set_seed_params(2, torch.full((8,), 0.7), 1.2)
            return m

        plain, ddp = build(), DistributedDataParallel(build())
        x, t = torch.randn(16, 8), torch.randn(16, 2)
        for model in (plain, ddp):
            torch.nn.functional.mse_loss(model(x), t).backward()
        for a, b in zip(plain.parameters(), ddp.module.parameters(), strict=True):
            assert a.grad is not None and b.grad is not None
            assert rel_l2(b.grad, a.grad) <= 1e-6
        assert ddp.module[1].weight.grad[2].abs().sum() > 0
    finally:
        dist.destroy_process_group()
