"""Every bad input raises a Python exception that says what was wrong, and the layer keeps its state."""

from __future__ import annotations

import pathlib

import pytest
import torch

import kasmina
from conftest import mixed_layer, random_input, rel_l2
from kasmina import BlueprintType, KasminaLayer, LifecycleState, reference


def still_works(layer: KasminaLayer, device: str) -> None:
    """The layer's state is what it was, and a forward still matches the reference."""
    x = random_input(5, layer.hidden_dim, layer.dtype, device, seed=99)
    with torch.no_grad():
        y = layer(x)
    want = reference.forward(x.double().cpu(), reference.plan_of(layer))
    assert rel_l2(y, want) <= 2e-3


@pytest.fixture
def layer(device: str) -> KasminaLayer:
    return mixed_layer(device, torch.float32, BlueprintType.MLP)


def bad_calls(layer: KasminaLayer, device: str) -> list[tuple[str, object, type[Exception], str]]:
    h = layer.hidden_dim
    x = random_input(4, h, torch.float32, device)
    return [
        ("wrong width", lambda: layer(random_input(4, h + 1, torch.float32, device)), ValueError, "hidden_dim"),
        ("scalar", lambda: layer(torch.tensor(1.0, device=device)), ValueError, "shape"),
        ("not a tensor", lambda: layer([1.0] * h), ValueError, "torch.Tensor"),
        ("wrong dtype", lambda: layer(x.to(torch.bfloat16)), ValueError, "dtype"),
        ("float64", lambda: layer(x.double()), ValueError, "dtype"),
        ("non-contiguous", lambda: layer(random_input(h, 4, torch.float32, device).t()), ValueError, "contiguous"),
        ("wrong device", lambda: layer(x.to("meta")), ValueError, "device"),
        ("seed out of range", lambda: layer.germinate(99, 1, BlueprintType.MLP), ValueError, "out of range"),
        ("bad blueprint", lambda: layer.germinate(0, 1, 7), ValueError, "7"),
        (
            "illegal transition",
            lambda: layer.transition(0, LifecycleState.FOSSILIZED),
            kasmina.TransitionError,
            "not a legal",
        ),
        ("germinate twice", lambda: layer.germinate(3, 1, BlueprintType.MLP), kasmina.TransitionError, "legal"),
        ("bad state value", lambda: layer.transition(0, 42), ValueError, "42"),
        ("NaN alpha", lambda: layer.set_alpha(3, float("nan")), ValueError, "NaN"),
        ("wrong signal count", lambda: layer.end_epoch([(0.0, 0.0)] * 3), ValueError, "signals"),
        ("bad signal", lambda: layer.end_epoch({0: (1.0,)}), ValueError, "improvement"),
        ("weights of the wrong size", lambda: layer.set_seed_params(0, torch.zeros(3)), ValueError, "weights"),
    ]


def test_bad_calls_raise_clear_errors_and_change_nothing(layer: KasminaLayer, device: str) -> None:
    before = layer.to_bytes()
    for name, call, exc, words in bad_calls(layer, device):
        with pytest.raises(exc, match=words) as info:
            call()  # type: ignore[operator]
        assert isinstance(info.value, kasmina.KasminaError), name
        assert layer.to_bytes() == before, f"{name} changed the layer"
        assert layer.telemetry()[0].count == 0, f"{name} added statistics"
    still_works(layer, device)


def test_bad_configurations_raise_config_errors() -> None:
    with pytest.raises(kasmina.ConfigError, match="multiple"):
        KasminaLayer(10, 3)
    with pytest.raises(kasmina.ConfigError):
        KasminaLayer(0, 1)
    with pytest.raises(kasmina.ConfigError, match="stability"):
        KasminaLayer(8, 2, config=kasmina.LayerConfig(stability="loose"))  # type: ignore[arg-type]
    with pytest.raises(kasmina.InvalidArgumentError, match="device"):
        KasminaLayer(8, 2, device="mps")
    with pytest.raises(kasmina.InvalidArgumentError, match="dtype"):
        KasminaLayer(8, 2, dtype=torch.float64)
    with pytest.raises(TypeError):
        KasminaLayer(8, 2, config={"no_such_field": 1})


def test_cuda_is_a_clear_error_where_there_is_no_gpu() -> None:
    if kasmina.cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(kasmina.DeviceUnavailableError, match="CUDA"):
        KasminaLayer(8, 2, device="cuda:0")


def test_bad_snapshots_raise_snapshot_errors(layer: KasminaLayer, device: str, tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.safetensors"
    layer.save(good)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:-9] + bytes([data[-9] ^ 0x10]) + data[-8:],
        "empty": b"",
        "not a snapshot": b"hello world" * 10,
    }
    for name, bad in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        path.write_bytes(bad)
        with pytest.raises(kasmina.SnapshotError):
            KasminaLayer.load(path, device=device)
        with pytest.raises(kasmina.SnapshotError):
            KasminaLayer.from_bytes(bad, device=device)
    with pytest.raises(kasmina.SnapshotError):
        KasminaLayer.load(tmp_path / "missing.safetensors", device=device)
    with pytest.raises(kasmina.SnapshotError):
        layer.save(tmp_path / "no_such_dir" / "x.safetensors")
    # A failed save leaves nothing behind and the good file is untouched.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []
    assert good.read_bytes() == data
    still_works(layer, device)


def test_a_mismatched_state_dict_is_refused(layer: KasminaLayer, device: str) -> None:
    other = KasminaLayer(32, 4, device=device)
    before = layer.to_bytes()
    with pytest.raises(kasmina.InvalidArgumentError, match="hidden_dim=32, num_seeds=4"):
        layer.load_state_dict(other.state_dict())
    assert layer.to_bytes() == before
    still_works(layer, device)


def test_backward_of_a_non_contiguous_gradient_is_handled(layer: KasminaLayer, device: str) -> None:
    # y.sum() gives an expanded (stride 0) gradient: the layer makes it contiguous itself.
    x = random_input(6, layer.hidden_dim, torch.float32, device).requires_grad_(True)
    layer(x).sum().backward()
    g = torch.ones(6, layer.hidden_dim)
    dx, _, _ = reference.gradients(x.detach().cpu(), g, reference.plan_of(layer))
    assert rel_l2(x.grad, dx) <= 1e-5
