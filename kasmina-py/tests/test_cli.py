"""The Python layer and the `kasmina` command read and write the same snapshots and reports."""

from __future__ import annotations

import json
import pathlib
import subprocess

import numpy as np
import torch

from conftest import mixed_layer, random_input
from kasmina import BlueprintType, GraftingStrategy, KasminaLayer, LifecycleState


def run(cli: pathlib.Path, *args: object) -> str:
    out = subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"kasmina {' '.join(map(str, args))}: {out.stderr}"
    return out.stdout


def test_the_cli_verifies_what_python_saved(cli: pathlib.Path, device: str, tmp_path: pathlib.Path) -> None:
    layer = mixed_layer(device, torch.float32, BlueprintType.CONV, seed=9)
    torch.optim.SGD(layer.parameters(), lr=0.1)  # parameters as a trainer holds them
    layer(random_input(8, layer.hidden_dim, torch.float32, device))
    layer.end_epoch()
    path = tmp_path / "py.safetensors"
    layer.save(path)
    assert "ok" in run(cli, "state", "verify", path).lower()
    doc = json.loads(run(cli, "state", "inspect", "--json", path))
    assert doc["epoch"] == 1
    assert f"{layer.checksum():08x}" in json.dumps(doc)


def test_python_loads_what_the_cli_saved(cli: pathlib.Path, device: str, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cli.safetensors"
    run(cli, "state", "new", "--hidden", 64, "--seeds", 8, path)
    run(
        cli,
        "state",
        "germinate",
        "--seed",
        5,
        "--type",
        "attention",
        "--blueprint-id",
        42,
        "--strategy",
        "drift-controlled",
        path,
    )
    run(cli, "state", "transition", "--seed", 5, "--to", "training", path)
    layer = KasminaLayer.load(path, device=device)
    s = layer.seed(5)
    assert (s.lifecycle, s.blueprint_type, s.blueprint_id, s.grafting_strategy) == (
        LifecycleState.TRAINING,
        BlueprintType.ATTENTION,
        42,
        GraftingStrategy.DRIFT_CONTROLLED,
    )
    assert layer.state.count(LifecycleState.DORMANT) == 7


def test_end_epoch_report_equals_the_cli_telemetry(cli: pathlib.Path, tmp_path: pathlib.Path) -> None:
    layer = mixed_layer("cpu", torch.float32, BlueprintType.MLP, seed=12)
    state = tmp_path / "s.safetensors"
    layer.save(state)
    x = random_input(40, layer.hidden_dim, torch.float32, "cpu", seed=13)
    x[3, 5] = float("nan")
    np.save(tmp_path / "x.npy", x.numpy())
    run(
        cli,
        "forward",
        "--state",
        state,
        "--input",
        tmp_path / "x.npy",
        "--output",
        tmp_path / "y.npy",
        "--telemetry",
        tmp_path / "t.json",
    )
    loaded = KasminaLayer.load(state)
    with torch.no_grad():
        y = loaded(x)
    report = loaded.end_epoch()
    assert report.to_json() == (tmp_path / "t.json").read_text().strip()
    y_cli = torch.from_numpy(np.load(tmp_path / "y.npy"))
    assert torch.equal(y.view(torch.int32), y_cli.view(torch.int32))
