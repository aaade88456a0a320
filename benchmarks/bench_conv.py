"""Microbenchmark: fused point convolution vs the unfused references (docs/design.md §4).

For each configuration and variant (``reference``: materialised per-edge
kernels; ``factorized``: the docs/design.md §2 identity in plain torch; ``fused``: the
compiled op) a fresh worker process builds the layer and graph, warms up, and
reports the median time of the forward pass (no grad) and of forward+backward
over ``--reps`` runs, and the peak extra resident memory of one forward+backward
(Linux VmHWM, reset before the measurement). Ratios are relative to the
reference measured in the same run. Results go to ``benchmarks/results/`` as
JSON, Markdown and a PNG plot.

    python benchmarks/bench_conv.py [--configs S,2D,M] [--variants ...] [--reps 5]

A variant ``backend:nonlinearity`` (e.g. ``fused:gated``) builds the layer's
kernel MLP with that nonlinearity (default: the group's ``auto``, Fourier for
O(3)/SO(2)); ``--name`` sets the file names of the results.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# name: (nodes, neighbours, group, field repeats, pos dim)
CONFIGS = {
    "S": dict(nodes=2_000, k=16, group="O3", repeats=8, dim=3),
    "M": dict(nodes=10_000, k=32, group="O3", repeats=8, dim=3),
    "L": dict(nodes=100_000, k=32, group="O3", repeats=16, dim=3),
    "2D": dict(nodes=20_000, k=16, group="SO2", repeats=8, dim=2),
}
VARIANTS = ("reference", "factorized", "fused")


# ---------------------------------------------------------------- worker side
def knn_edges(pos, k, chunk=2048):
    """kNN graph (sources of each target) in plain torch, chunked."""
    import torch
    n = pos.shape[0]
    src = []
    for start in range(0, n, chunk):
        d = torch.cdist(pos[start:start + chunk], pos)
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        src.append(d.topk(k, largest=False).indices)
    src = torch.cat(src).reshape(-1)
    dst = torch.arange(n).repeat_interleave(k)
    return torch.stack([src, dst])


def build(config: str, seed: int = 0, nonlinearity: str = "auto"):
    import torch
    from escnn import gspaces
    from escnn import nn as enn
    from pyg_implicit import ImplicitPointConv

    cfg = CONFIGS[config]
    if cfg["group"] == "O3":
        gs = gspaces.flipRot3dOnR3()
        reps = [gs.fibergroup.trivial_representation, gs.basespace_action]
    else:
        gs = gspaces.rot2dOnR2(-1)
        G = gs.fibergroup
        reps = [G.irrep(0), G.irrep(1), G.irrep(2)]
    ftype = enn.FieldType(gs, reps * cfg["repeats"])
    torch.manual_seed(seed)
    pos = torch.rand(cfg["nodes"], cfg["dim"])
    edge_index = knn_edges(pos, cfg["k"])
    width = float((cfg["k"] / cfg["nodes"]) ** (1 / cfg["dim"]))
    conv = ImplicitPointConv(ftype, ftype, hidden_channels=16, hidden_layers=2, band_limit=2,
                             width=width, num_neighbors=cfg["k"], nonlinearity=nonlinearity)
    x = torch.randn(cfg["nodes"], ftype.size)
    return conv, x, pos, edge_index


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(config: str, variant: str, reps: int, warmup: int) -> dict:
    import torch
    backend, _, nonlinearity = variant.partition(":")
    conv, x, pos, edge_index = build(config, nonlinearity=nonlinearity or "auto")
    conv.backend = backend
    pos.requires_grad_(True)
    x.requires_grad_(True)

    def forward():
        with torch.no_grad():
            conv(x, pos, edge_index)

    def forward_backward():
        out = conv(x, pos, edge_index)
        out.backward(torch.ones_like(out))

    # peak memory of one forward+backward, on top of what is allocated now
    import gc
    forward()  # builds caches (e.g. the CSR of the fused op)
    gc.collect()
    base = _rss_kib("VmRSS")
    peak_ok = _reset_peak_rss()
    forward_backward()
    peak_mib = (_rss_kib("VmHWM") - base) / 1024 if peak_ok else float("nan")

    times = {}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        times[name] = samples
    return {
        "config": config, "variant": variant, "edges": int(edge_index.shape[1]),
        "nodes": int(x.shape[0]), "channels": int(x.shape[1]),
        "hidden_dim": int(conv.kernel.hidden_type.size),
        "forward_s": statistics.median(times["forward"]),
        "forward_backward_s": statistics.median(times["forward_backward"]),
        "forward_samples": times["forward"], "forward_backward_samples": times["forward_backward"],
        "peak_extra_mib": peak_mib, "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------- driver side
def run_worker(config, variant, reps, warmup, timeout):
    cmd = [sys.executable, __file__, "--worker", "--configs", config, "--variants", variant,
           "--reps", str(reps), "--warmup", str(warmup)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": config, "variant": variant, "error": f"timeout after {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"config": config, "variant": variant, "error": " | ".join(tail)}
    return json.loads(lines[-1])


def markdown(rows, meta) -> str:
    out = [f"# Point convolution benchmark ({meta['machine']})", "",
           f"{meta['date']}, torch {meta['torch']}, {meta['threads']} threads, median of "
           f"{meta['reps']} runs after {meta['warmup']} warm-up. Ratios: reference time / "
           "variant time (higher is better); memory: reference peak / variant peak; "
           "last column: factorized fwd+bwd time / variant fwd+bwd time.", "",
           "| config | E | variant | forward [s] | fwd+bwd [s] | peak extra mem [MiB] "
           "| fwd speed-up | fwd+bwd speed-up | memory ratio | fwd+bwd vs factorized |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    ref = {r["config"]: r for r in rows if r["variant"] == "reference" and "error" not in r}
    fac = {r["config"]: r for r in rows if r["variant"] == "factorized" and "error" not in r}
    for r in rows:
        if "error" in r:
            out.append(f"| {r['config']} | | {r['variant']} | error: {r['error']} | | | | | | |")
            continue
        base = ref.get(r["config"])
        ratio = lambda key, b=base: f"{b[key] / r[key]:.2f}x" if b and r[key] > 0 else "n/a"  # noqa
        out.append(f"| {r['config']} | {r['edges']:,} | {r['variant']} | {r['forward_s']:.3f} | "
                   f"{r['forward_backward_s']:.3f} | {r['peak_extra_mib']:.0f} | "
                   f"{ratio('forward_s')} | {ratio('forward_backward_s')} | "
                   f"{ratio('peak_extra_mib')} | "
                   f"{ratio('forward_backward_s', fac.get(r['config']))} |")
    return "\n".join(out) + "\n"


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if "error" not in r]
    configs = sorted({r["config"] for r in ok}, key=list(CONFIGS).index)
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in zip(axes, ("forward_s", "forward_backward_s", "peak_extra_mib"),
                              ("forward [s]", "forward+backward [s]", "peak extra memory [MiB]")):
        for i, v in enumerate(variants):
            vals = [next((r[key] for r in ok if r["config"] == c and r["variant"] == v), 0)
                    for c in configs]
            w = 0.8 / len(variants)
            ax.bar([j + w * (i - (len(variants) - 1) / 2) for j in range(len(configs))], vals,
                   width=w, label=v)
        ax.set_xticks(range(len(configs)), configs)
        ax.set_yscale("log")
        ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="S,2D,M")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=1800, help="per worker, seconds")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="bench_conv", help="stem of the result files")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configs, variants = args.configs.split(","), args.variants.split(",")
    for c in configs:
        if c not in CONFIGS:
            parser.error(f"unknown config {c!r}; choose from {list(CONFIGS)}")
    for v in variants:
        if v.partition(":")[0] not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {list(VARIANTS)} "
                         f"(optionally with ':<nonlinearity>')")
    if args.worker:
        print(json.dumps(worker(configs[0], variants[0], args.reps, args.warmup)))
        return

    import torch
    from pyg_implicit import ops
    if "fused" in variants and not ops.is_available():
        print("note: the compiled extension is not available; skipping the fused variant")
        variants = [v for v in variants if v.partition(":")[0] != "fused"]
    rows = []
    for c in configs:
        for v in variants:
            print(f"[bench] {c} {v} ...", flush=True)
            row = run_worker(c, v, args.reps, args.warmup, args.timeout)
            rows.append(row)
            if "error" in row:
                print(f"  error: {row['error']}")
            else:
                print(f"  E={row['edges']:,}  forward {row['forward_s']:.3f}s  fwd+bwd "
                      f"{row['forward_backward_s']:.3f}s  peak +{row['peak_extra_mib']:.0f} MiB",
                      flush=True)
    meta = {"machine": f"{platform.node()} CPU, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "reps": args.reps, "warmup": args.warmup}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows, meta)
    (out / f"{args.name}.md").write_text(table)
    plot(rows, out / f"{args.name}.png")
    print()
    print(table)


if __name__ == "__main__":
    main()
