#!/usr/bin/env python3
"""PyTorch peer of the Kasmina forward (SPEC sections 4, 5.1, 5.2), for comparison
with the CUDA backend (`kasmina bench --backend cuda`).

The same forward with per-seed telemetry in plain PyTorch, eager and under torch.compile:
`kasmina.bench.peer` over `kasmina.reference` (install the package first:
`pip install ./kasmina-py`, or the wheel on a GPU machine). The layer state is the Rust
harness's own seed mix (`dormant`: every seed identity; `mixed`: 25% GRAFTING over the four
blueprint types with alpha 0.5, 5% FOSSILIZED, the rest DORMANT), read from the package.

Timing: CUDA events around one call queued behind a device-side sleep, median of --reps calls
after warm-up; GB/s counts one read and one write of X, like the Rust bench, next to
`y.copy_(x)` in the same run. `python -m kasmina.bench` runs this peer beside the layer itself.

    python3 benches/peers/torch_kasmina.py                  # the default shapes
    python3 benches/peers/torch_kasmina.py --b 4096 --h 4096 --s 64 --dtype bf16 --mix mixed
"""

import argparse

import torch
from kasmina.bench import DTYPES, peer, single_ms, warm

from kasmina import KasminaLayer, _kasmina, reference


def run(b, h, s, dtype_name, mix, reps, compiled_fn):
    dtype = DTYPES[dtype_name]
    x = (torch.rand(b, h, device="cuda") * 4 - 2).to(dtype)
    y = torch.empty_like(x)
    layer = KasminaLayer.from_bytes(
        _kasmina.bench_snapshot(h, s, mix), device="cuda", dtype=dtype
    )
    plan = reference.plan_of(layer).to("cuda", torch.float32)
    nbytes = 2 * x.numel() * x.element_size()
    warm(lambda: y.copy_(x))
    copy_gbps = nbytes / single_ms(lambda: y.copy_(x), reps) / 1e6
    for name, fn in (("eager", peer), ("compile", compiled_fn)):
        warm(lambda: fn(x, plan))  # noqa: B023
        ms = single_ms(lambda: fn(x, plan), reps)  # noqa: B023
        gbps = nbytes / ms / 1e6
        print(
            f"torch-{name:<7} B={b:<6} H={h:<5} S={s:<4} {dtype_name:<4} {mix:<7} forward "
            f"{ms:9.4f} ms {gbps:8.1f} GB/s  copy {copy_gbps:8.1f} GB/s  ratio {gbps / copy_gbps:5.2f}"
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--b", type=int)
    ap.add_argument("--h", type=int)
    ap.add_argument("--s", type=int)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"])
    ap.add_argument("--mix", choices=["dormant", "mixed"])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA device for PyTorch")
        return
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}")
    compiled = torch.compile(peer, dynamic=False)
    shapes = (
        [(args.b, args.h, args.s)] if args.b else [(16384, 8192, 128), (32, 768, 16)]
    )
    dtypes = [args.dtype] if args.dtype else ["f32", "bf16"]
    mixes = [args.mix] if args.mix else ["dormant", "mixed"]
    with torch.no_grad():
        for b, h, s in shapes:
            for dt in dtypes:
                for mix in mixes:
                    run(b, h, s, dt, mix, args.reps, compiled)


if __name__ == "__main__":
    main()
