"""Benchmark of the layer called from PyTorch, in one process on one CUDA card.

For each case it measures, in the same run:

- ``kasmina bench``'s own harness on the native backend (the Rust layer on its own tensors and
  stream: device-timed median of single calls, back-to-back per-call time, the device's copy);
- the same layer state called from PyTorch (``KasminaLayer`` on PyTorch tensors, in place, on
  PyTorch's current stream), timed the same two ways, and PyTorch's ``copy_`` of the same bytes;
- ``torch.compile`` of the plain-PyTorch reference forward (:mod:`kasmina.reference`, in f32
  arithmetic like the layer, with the same per-seed telemetry);
- at the small shape, a forward step (Linear -> layer -> Linear) and a training step (the same,
  loss, backward, SGD) captured as CUDA graphs and replayed, against the same steps without the
  layer: what the layer adds to each.

Single calls are timed with CUDA events around one call queued behind a short device-side
sleep, so the host's Python overhead is not counted; back-to-back calls are timed over batches.

    python -m kasmina.bench                      # the default cases, a table on stdout
    python -m kasmina.bench --json bench.json --markdown bench.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from . import _kasmina, reference
from ._ops import DTYPE_CODES, backward_impl, forward_impl
from .layer import KasminaLayer

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _events() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def warm(fn: Callable[[], object], seconds: float = 0.3) -> None:
    """Runs ``fn`` back to back for ``seconds`` so the card is at its working clock."""
    t = time.perf_counter()
    n = 0
    while time.perf_counter() - t < seconds or n < 3:
        fn()
        n += 1
        if n % 32 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()


def single_ms(fn: Callable[[], object], reps: int) -> float:
    """Median device time of one call, queued behind a device-side sleep (host overhead hidden)."""
    times = []
    for _ in range(reps):
        start, end = _events()
        torch.cuda._sleep(200_000)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def stream_ms(fn: Callable[[], object], one_ms: float) -> float:
    """Per-call device time of back-to-back calls (median of 5 batches of about 2 ms each)."""
    calls = max(1, min(1000, int(2.0 / max(one_ms, 1e-4))))
    out = []
    for _ in range(5):
        start, end = _events()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / calls)
    return statistics.median(out)


def peer(x: torch.Tensor, plan: reference.Plan) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The plain-PyTorch forward with telemetry: SPEC 5.1 in f32 arithmetic, SPEC 5.2 statistics."""
    y = reference.forward(x.float(), plan).to(x.dtype)
    b, h = x.shape
    s = plan.weight.shape[0]
    xf = x.float().reshape(b, s, h // s)
    finite = torch.isfinite(xf)
    xz = torch.where(finite, xf, torch.zeros_like(xf))
    count = finite.sum(dim=(0, 2))
    mean = xz.sum(dim=(0, 2)) / count.clamp(min=1)
    dev = torch.where(finite, xf - mean.reshape(1, s, 1), torch.zeros_like(xf))
    inf = torch.full_like(xf, float("inf"))
    stats = (
        count,
        mean,
        (dev * dev).sum(dim=(0, 2)),
        torch.where(finite, xf, inf).amin(dim=(0, 2)),
        torch.where(finite, xf, -inf).amax(dim=(0, 2)),
        (finite & (xf.abs() < plan.dead_eps)).sum(dim=(0, 2)),
        (~finite).sum(dim=(0, 2)),
    )
    return y, stats


def big_case(b: int, h: int, s: int, dt: str, mix: str, reps: int, device: str, compiled: Any) -> list[dict]:
    """One (shape, dtype, mix): native harness, PyTorch layer, PyTorch copy, compiled reference."""
    dtype = DTYPES[dt]
    native = json.loads(_kasmina.native_bench(device, b, h, s, DTYPE_CODES[dtype], mix, reps))
    nat = {r["op"]: r for r in native}
    layer = KasminaLayer.from_bytes(_kasmina.bench_snapshot(h, s, mix), device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(2)
    x = (torch.rand(b, h, device=device, generator=gen) * 4 - 2).to(dtype)
    g = (torch.rand(b, h, device=device, generator=gen) * 4 - 2).to(dtype)
    w, sc, handle = layer.weight, layer.scale, layer._handle
    y = torch.empty_like(x)
    rows = []
    nbytes = 2 * x.numel() * x.element_size()
    ops: dict[str, tuple[Callable[[], object], int]] = {
        "forward": (lambda: forward_impl(x, w, sc, handle), nbytes),
        "backward": (lambda: backward_impl(x, g, w, sc, handle), nbytes * 3 // 2),
    }
    warm(lambda: y.copy_(x))
    copy_one = single_ms(lambda: y.copy_(x), reps)
    copy_gbps = nbytes / (copy_one * 1e-3) / 1e9
    for op, (fn, moved) in ops.items():
        with torch.no_grad():
            warm(fn)
            one = single_ms(fn, reps)
            strm = stream_ms(fn, one)
        n = nat[op]
        rows.append(
            {
                "case": f"{b}x{h}/{s}",
                "dtype": dt,
                "mix": mix,
                "op": op,
                "native_ms": n["median_ms"],
                "native_stream_ms": n["stream_ms"],
                "native_ratio": n["ratio"],
                "torch_layer_ms": one,
                "torch_layer_stream_ms": strm,
                "torch_layer_ratio": moved / (one * 1e-3) / 1e9 / n["copy_gbps"],
                "vs_native": one / n["median_ms"],
                "vs_native_stream": strm / n["stream_ms"],
                "native_copy_gbps": n["copy_gbps"],
                "torch_copy_gbps": copy_gbps,
            }
        )
    plan = reference.plan_of(layer).to(device, torch.float32)
    with torch.no_grad():
        warm(lambda: compiled(x, plan), seconds=0.5)
        ref_ms = single_ms(lambda: compiled(x, plan), reps)
    rows[0]["compiled_reference_ms"] = ref_ms
    rows[0]["speedup_vs_compiled_reference"] = ref_ms / rows[0]["torch_layer_ms"]
    return rows


class _Host(torch.nn.Module):
    def __init__(self, h: int, layer: KasminaLayer | None, dtype: torch.dtype, device: str) -> None:
        super().__init__()
        self.a = torch.nn.Linear(h, h, device=device, dtype=dtype)
        self.layer = layer
        self.b = torch.nn.Linear(h, h, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.a(x)
        if self.layer is not None:
            z = self.layer(z)
        return self.b(z)


def graphed_step_us(h: int, s: int, b: int, dt: str, mix: str | None, device: str, replays: int, train: bool) -> float:
    """Microseconds per replay of a captured step (the layer in it unless ``mix`` is None): a
    forward, or with ``train`` a training step (forward, loss, backward, SGD) captured the way
    PyTorch's CUDA-graph documentation shows (gradients set to None before the capture, so the
    backward hands its gradients to the parameters without accumulation kernels)."""
    dtype = DTYPES[dt]
    torch.manual_seed(0)
    layer = None
    if mix is not None:
        layer = KasminaLayer.from_bytes(_kasmina.bench_snapshot(h, s, mix), device=device, dtype=dtype)
    model = _Host(h, layer, dtype, device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(b, h, device=device, dtype=dtype)
    out: list[torch.Tensor] = []

    def step() -> None:
        if train:
            model(x).float().square().mean().backward()
            opt.step()
        else:
            with torch.no_grad():
                out.append(model(x))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(5):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    warm(graph.replay)
    per = []
    for _ in range(5):
        start, end = _events()
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        per.append(start.elapsed_time(end) * 1e3 / replays)
    return statistics.median(per)


def small_case(dt: str, mix: str, device: str, replays: int) -> list[dict]:
    h, s, b = 768, 16, 32
    rows = []
    for step in ("forward", "training"):
        train = step == "training"
        with_layer = graphed_step_us(h, s, b, dt, mix, device, replays, train)
        without = graphed_step_us(h, s, b, dt, None, device, replays, train)
        rows.append(
            {
                "case": f"{b}x{h}/{s}",
                "dtype": dt,
                "mix": mix,
                "step": step,
                "step_with_layer_us": with_layer,
                "step_without_layer_us": without,
                "layer_adds_us": with_layer - without,
            }
        )
    return rows


def markdown(big: list[dict], small: list[dict], meta: dict) -> str:
    header = (
        "| case | dtype | mix | op | kasmina bench ms | via PyTorch ms | ratio | back-to-back ratio "
        "| of copy (native / PyTorch) | torch.compile reference ms | speed-up |"
    )
    out = [f"Card: {meta['device']}; torch {meta['torch']}; {meta['date']}.", "", header, "|---" * 11 + "|"]
    for r in big:
        ref = r.get("compiled_reference_ms")
        ref_cols = "| |" if ref is None else f"| {ref:.4f} | {r['speedup_vs_compiled_reference']:.1f}x |"
        out.append(
            f"| {r['case']} | {r['dtype']} | {r['mix']} | {r['op']} | {r['native_ms']:.4f} | {r['torch_layer_ms']:.4f} "
            f"| {r['vs_native']:.3f} | {r['vs_native_stream']:.3f} | {r['native_ratio']:.3f} / "
            f"{r['torch_layer_ratio']:.3f} {ref_cols}"
        )
    out += [
        "",
        "| case | dtype | mix | graphed step | with layer (µs) | without (µs) | layer adds (µs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in small:
        out.append(
            f"| {r['case']} | {r['dtype']} | {r['mix']} | {r['step']} | {r['step_with_layer_us']:.2f} | "
            f"{r['step_without_layer_us']:.2f} | {r['layer_adds_us']:.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="16384,8192,128", help="B,H,S of the large cases")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--mixes", default="dormant,mixed")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--replays", type=int, default=500)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--skip-small", action="store_true", help="leave out the CUDA-graph steps at the small shape")
    ap.add_argument("--skip-large", action="store_true", help="leave out the large shape's cases")
    ap.add_argument("--json")
    ap.add_argument("--markdown")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device for PyTorch: nothing to measure", file=sys.stderr)
        return 1
    torch.cuda.set_device(torch.device(args.device))
    b, h, s = (int(v) for v in args.shape.split(","))
    meta = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m kasmina.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{meta['device']} (torch {meta['torch']})", flush=True)
    compiled = torch.compile(peer, dynamic=False)
    big: list[dict] = []
    for dt in [] if args.skip_large else args.dtypes.split(","):
        for mix in args.mixes.split(","):
            rows = big_case(b, h, s, dt, mix, args.reps, args.device, compiled)
            big += rows
            for r in rows:
                print(json.dumps(r), flush=True)
    small: list[dict] = []
    if not args.skip_small:
        for dt in args.dtypes.split(","):
            for mix in args.mixes.split(","):
                for row in small_case(dt, mix, args.device, args.replays):
                    small.append(row)
                    print(json.dumps(row), flush=True)
    text = markdown(big, small, meta)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "large": big, "small": small}, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
