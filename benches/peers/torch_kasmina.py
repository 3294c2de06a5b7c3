#!/usr/bin/env python3
"""PyTorch peer of the Kasmina forward (SPEC sections 4, 5.1, 5.2), for comparison
with the CUDA backend (`cargo bench -p kasmina-benches --bench cuda`).

The same forward in eager PyTorch and under torch.compile: output of every seed
mode and blueprint type plus per-seed telemetry (count, mean, m2, min, max,
dead, nonfinite over the finite elements). Seed mixes follow the Rust harness:
`dormant` (every seed identity) and `mixed` (25% GRAFTING over the four
blueprint types with alpha 0.5, 5% FOSSILIZED, the rest DORMANT).

Timing: CUDA events, median of --reps calls after warm-up; GB/s counts one read
and one write of X, like the Rust bench, next to `y.copy_(x)` in the same run.

    python3 benches/peers/torch_kasmina.py                  # the issue's shapes
    python3 benches/peers/torch_kasmina.py --b 4096 --h 4096 --s 64 --dtype bf16 --mix mixed
"""
import argparse
import statistics

import torch

RES, ATT, MLP, CONV = 0, 1, 2, 3


def make_state(h, s, mix, device, seed=1):
    c = h // s
    g = torch.Generator().manual_seed(seed)
    mode = torch.zeros(s, dtype=torch.int64)  # 0 identity, 1 blend, 2 blueprint
    alpha = torch.zeros(s)
    btype = torch.zeros(s, dtype=torch.int64)
    w = torch.zeros(s, c)
    scale = torch.ones(s)
    if mix == "mixed":
        ids = torch.randperm(s, generator=g)
        grafting, fossil = s // 4, s * 5 // 100
        for k, i in enumerate(ids[: grafting + fossil].tolist()):
            mode[i] = 1 if k < grafting else 2
            alpha[i] = 0.5 if k < grafting else 1.0
            btype[i] = k % 4
            w[i] = torch.rand(c, generator=g) - 0.5
            scale[i] = 0.5 + torch.rand(1, generator=g)
    to = dict(device=device)
    return dict(mode=mode.to(**to), alpha=alpha.to(**to), btype=btype.to(**to), w=w.to(**to), scale=scale.to(**to),
                dead_eps=1e-6)


def kasmina_forward(x, mode, alpha, btype, w, scale, dead_eps: float):
    """y = layer(x) and per-seed telemetry. x: [B, H] in f32/f16/bf16."""
    b, h = x.shape
    s, c = w.shape
    xf = x.float().view(b, s, c)
    sv = scale.view(1, s, 1)
    wv = w.view(1, s, c)
    p = torch.softmax(w, dim=1).view(1, s, c)
    t_res = xf + wv * sv
    t_att = xf * p
    t_mlp = torch.relu(xf * wv) * sv
    xm1 = torch.nn.functional.pad(xf, (1, 0))[..., :c]
    xm2 = torch.nn.functional.pad(xf, (2, 0))[..., :c]
    w0, w1, w2 = (w[:, k].view(1, s, 1) if c > k else torch.zeros_like(sv) for k in range(3))
    t_conv = sv * (w0 * xf + w1 * xm1 + w2 * xm2)
    ty = btype.view(1, s, 1)
    t = torch.where(ty == RES, t_res, torch.where(ty == ATT, t_att, torch.where(ty == MLP, t_mlp, t_conv)))
    a = alpha.view(1, s, 1)
    md = mode.view(1, s, 1)
    blended = torch.where(md == 2, t, (1 - a) * xf + a * t)
    y = torch.where(md == 0, x.view(b, s, c), blended.to(x.dtype)).view(b, h)

    finite = torch.isfinite(xf)
    xz = torch.where(finite, xf, torch.zeros_like(xf))
    count = finite.sum(dim=(0, 2))
    mean = xz.sum(dim=(0, 2)) / count.clamp(min=1)
    dev = torch.where(finite, xf - mean.view(1, s, 1), torch.zeros_like(xf))
    m2 = (dev * dev).sum(dim=(0, 2))
    inf = torch.full_like(xf, float("inf"))
    mn = torch.where(finite, xf, inf).amin(dim=(0, 2))
    mx = torch.where(finite, xf, -inf).amax(dim=(0, 2))
    dead = (finite & (xf.abs() < dead_eps)).sum(dim=(0, 2))
    nonfinite = (~finite).sum(dim=(0, 2))
    return y, (count, mean, m2, mn, mx, dead, nonfinite)


def time_ms(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run(b, h, s, dtype_name, mix, reps, compiled_fn):
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    dev = "cuda"
    x = (torch.rand(b, h, device=dev) * 4 - 2).to(dtype)
    y = torch.empty_like(x)
    st = make_state(h, s, mix, dev)
    nbytes = 2 * x.numel() * x.element_size()
    copy_ms = time_ms(lambda: y.copy_(x), reps)
    copy_gbps = nbytes / copy_ms / 1e6
    rows = []
    for name, fn in (("eager", kasmina_forward), ("compile", compiled_fn)):
        ms = time_ms(lambda: fn(x, **st), reps)
        gbps = nbytes / ms / 1e6
        rows.append((name, ms, gbps))
    for name, ms, gbps in rows:
        print(f"torch-{name:<7} B={b:<6} H={h:<5} S={s:<4} {dtype_name:<4} {mix:<7} forward "
              f"{ms:9.4f} ms {gbps:8.1f} GB/s  copy {copy_gbps:8.1f} GB/s  ratio {gbps / copy_gbps:5.2f}")


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
    compiled = torch.compile(kasmina_forward, dynamic=False)
    shapes = [(args.b, args.h, args.s)] if args.b else [(16384, 8192, 128), (32, 768, 16)]
    dtypes = [args.dtype] if args.dtype else ["f32", "bf16"]
    mixes = [args.mix] if args.mix else ["dormant", "mixed"]
    for b, h, s in shapes:
        for dt in dtypes:
            for mix in mixes:
                run(b, h, s, dt, mix, args.reps, compiled)


if __name__ == "__main__":
    main()
