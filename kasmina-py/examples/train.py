#!/usr/bin/env python3
"""A PyTorch training loop that grows seeds where the host network needs capacity.

The host is ``Linear(16, 64) -> KasminaLayer(64, 8) -> Linear(64, 4)``: linear end to end, so
it cannot fit the quadratic target ``(x A)^2 B`` on its own. A controller written in Python
reads each epoch's telemetry and loss:

- while the held-out loss still improves, it waits; when it stalls, it germinates the dormant
  seed whose chunk carries the largest gradient norm (the most pressure), with an MLP
  blueprint (a per-unit ReLU of learned slope) initialised to a small positive slope;
- GERMINATED -> TRAINING -> GRAFTING, where alpha ramps with the PERFORMANCE_LINKED strategy
  driven by the epoch's loss improvement; the layer moves the seed on to STABILIZATION and
  EVALUATING by itself;
- in EVALUATING the controller compares the held-out loss with the loss before the seed was
  germinated: better -> FINE_TUNING -> FOSSILIZED; worse -> CULLED.

The same run with germination off is the control. Prints which seeds fossilized or were culled
and the final held-out loss of both runs, like ``kasmina demo``::

    python kasmina-py/examples/train.py              # CPU, about 10 s on 2 cores
    python kasmina-py/examples/train.py --device cuda --json result.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import kasmina
from kasmina import KasminaLayer
from kasmina.controller import Controller

H, S, IN, OUT = 64, 8, 16, 4


class Host(torch.nn.Module):
    """The host network with one Kasmina layer between its two linear maps."""

    def __init__(self, device: str, config: kasmina.LayerConfig) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(IN, H)
        self.seeds = KasminaLayer(H, S, device=device, config=config)
        self.out = torch.nn.Linear(H, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.seeds(self.inp(x)))


def task(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's two maps: ``y = (x A)^2 B``, a quadratic response of 24 hidden directions."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(IN, 24, generator=g) / IN**0.5, torch.randn(24, OUT, generator=g) / 24**0.5


def data(maps: tuple[torch.Tensor, torch.Tensor], seed: int, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of the task (inputs drawn with ``seed``)."""
    a, b = maps
    x = torch.randn(n, IN, generator=torch.Generator().manual_seed(seed))
    return x.to(device), ((x @ a) ** 2 @ b).to(device)


def run(germinate: bool, epochs: int, seed: int, device: str) -> dict[str, object]:
    torch.manual_seed(seed)
    config = kasmina.LayerConfig(stabilization_epochs=2, grafting=kasmina.GraftingConfig(ramp_epochs=5))
    model = Host(device, config).to(device)
    maps = task(seed)
    x, y = data(maps, 2 * seed, 2048, device)
    xv, yv = data(maps, 2 * seed + 1, 1024, device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctl = Controller(model.seeds)
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], device=device)
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            ctl.observe(torch.nn.functional.mse_loss(model(xv), yv).item())
        report = model.seeds.end_epoch(ctl.signals())
        if germinate:
            ctl.step(epoch, report)
    with torch.no_grad():
        final = torch.nn.functional.mse_loss(model(xv), yv).item()
    return {
        "loss": final,
        "fossilized": ctl.fossilized,
        "culled": ctl.culled,
        "log": ctl.log,
        "states": [s.lifecycle.name for s in model.seeds.state.seeds],
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    grown = run(True, args.epochs, args.seed, args.device)
    control = run(False, args.epochs, args.seed, args.device)
    secs = time.perf_counter() - t0
    for line in grown["log"]:  # type: ignore[union-attr]
        print(line)
    fmt = lambda ids: ", ".join(map(str, ids)) or "none"
    print(f"fossilized: {fmt(grown['fossilized'])}; culled: {fmt(grown['culled'])}")
    ratio = control["loss"] / grown["loss"]  # type: ignore[operator]
    print(
        f"final held-out loss: {grown['loss']:.6f} with seeds vs {control['loss']:.6f} with germination off "
        f"({ratio:.1f}x lower), {secs:.1f} s"
    )
    result = {"grown": grown, "control": control, "seconds": secs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
