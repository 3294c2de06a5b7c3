"""Shared fixtures: the devices to test on, layers in every lifecycle mode, tolerances."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
import torch

import kasmina
from kasmina import BlueprintType, GraftingStrategy, KasminaLayer, LifecycleState

REPO = pathlib.Path(__file__).resolve().parents[2]

# SPEC 8: relative L2 error against the float64 reference.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available() and kasmina.cuda_device_count() > 0:
        devices.append("cuda")
    elif os.environ.get("KASMINA_REQUIRE_GPU") == "1":
        raise RuntimeError("KASMINA_REQUIRE_GPU=1 but PyTorch or the CUDA driver sees no GPU")
    return devices


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def cuda() -> str:
    if "cuda" not in DEVICES:
        pytest.skip("no CUDA device (set KASMINA_REQUIRE_GPU=1 to make this an error)")
    return "cuda"


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    """``‖got - want‖₂ / ‖want‖₂`` in float64 (absolute when ``want`` is 0)."""
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    den = w.norm().item()
    num = (g - w).norm().item()
    return num / den if den > 0 else num


def drive(layer: KasminaLayer, seed: int, to: LifecycleState, btype: BlueprintType, alpha: float = 0.37) -> None:
    """Moves a DORMANT seed through the legal transitions to ``to`` (alpha placed in GRAFTING)."""
    path = [LifecycleState(v) for v in range(LifecycleState.TRAINING, LifecycleState.FOSSILIZED + 1)]
    if to == LifecycleState.DORMANT:
        return
    layer.germinate(seed, 100 + seed, btype, GraftingStrategy.FIXED_RAMP)
    if to == LifecycleState.GERMINATED:
        return
    if to in (LifecycleState.CULLED, LifecycleState.CANCELLED):
        layer.transition(seed, LifecycleState.TRAINING)
        layer.transition(seed, to)
        return
    for st in path:
        layer.transition(seed, st)
        if st == LifecycleState.GRAFTING:
            layer.set_alpha(seed, alpha)
        if st == to:
            return


# One seed in every forward mode (identity, blend at several points, blueprint) and the
# identity states a controller passes through.
MODES = [
    *(LifecycleState(v) for v in range(LifecycleState.DORMANT, LifecycleState.FOSSILIZED + 1)),
    LifecycleState.CULLED,
    LifecycleState.CANCELLED,
]


def mixed_layer(
    device: str,
    dtype: torch.dtype,
    btype: BlueprintType,
    *,
    chunk: int = 16,
    seed: int = 0,
    config: kasmina.LayerConfig | None = None,
) -> KasminaLayer:
    """A layer with one seed in each of :data:`MODES` (blueprint ``btype``), random parameters."""
    s = len(MODES)
    layer = KasminaLayer(s * chunk, s, device=device, dtype=dtype, config=config)
    gen = torch.Generator().manual_seed(seed)
    for i, mode in enumerate(MODES):
        drive(layer, i, mode, btype, alpha=0.2 + 0.05 * i)
        layer.set_seed_params(i, torch.randn(chunk, generator=gen) * 0.8, 0.5 + torch.rand(1, generator=gen).item())
    return layer


def random_input(
    rows: int, h: int, dtype: torch.dtype, device: str, seed: int = 1, spread: float = 2.0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return ((torch.rand(rows, h, generator=gen) * 2 - 1) * spread).to(dtype).to(device)


@pytest.fixture(scope="session")
def cli() -> pathlib.Path:
    """The `kasmina` command of this workspace (built once if it is not there yet)."""
    env = os.environ.get("KASMINA_CLI")
    if env:
        return pathlib.Path(env)
    exe = REPO / "target" / "release" / "kasmina"
    if not exe.exists():
        cargo = shutil.which("cargo")
        if cargo is None:
            pytest.fail("the kasmina command is not built and cargo is not on PATH (set KASMINA_CLI)")
        subprocess.run([cargo, "build", "--release", "-p", "kasmina-cli"], cwd=REPO, check=True)
    return exe
