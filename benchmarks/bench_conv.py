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

``--peers`` compares the layer with other libraries' O(3) point convolutions at
matched irreps/field types (``benchmarks/peers.py``: e3nn's recipe, escnn's
``R3PointConv``; docs/design.md §4a): one process builds every variant on the
same graph and times them interleaved (round-robin over ``--reps`` rounds, so
load on the machine hits all alike); peak memory is measured for each variant in
a process of its own. Ratios are relative to e3nn. Results:
``benchmarks/results/bench_peers.{json,md,png}``.

    python benchmarks/bench_conv.py --peers [--configs M] [--variants fused,fused:gated,e3nn,escnn]
"""
from __future__ import annotations

import argparse
import importlib.util
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
PEER_VARIANTS = ("e3nn", "escnn")
PEERS_DEFAULT = "fused,fused:gated,e3nn,escnn"


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


def build_variant(config: str, variant: str, seed: int = 0):
    """The module of ``variant`` (``backend[:nonlinearity]`` or a peer) and its inputs."""
    backend, _, nonlinearity = variant.partition(":")
    conv, x, pos, edge_index = build(config, seed, nonlinearity or "auto")
    if backend in VARIANTS:
        conv.backend = backend
        return conv, x, pos, edge_index
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers
    if CONFIGS[config]["group"] != "O3":
        raise ValueError(f"peer {backend!r} needs an O(3) configuration, got {config!r}")
    radius = peers.matched_max_radius(pos, edge_index)
    peer = peers.build_peer(backend, conv.in_type, conv.out_type, band_limit=2, width=radius,
                            num_neighbors=CONFIGS[config]["k"], max_radius=radius)
    return peer, x, pos, edge_index


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


def _passes(module, x, pos, edge_index):
    import torch

    def forward():
        with torch.no_grad():
            module(x, pos, edge_index)

    def forward_backward():
        out = module(x, pos, edge_index)
        out.backward(torch.ones_like(out))
    return forward, forward_backward


def worker(config: str, variant: str, reps: int, warmup: int) -> dict:
    """Peak memory of one forward+backward and (reps > 0) median times of one variant."""
    import torch
    module, x, pos, edge_index = build_variant(config, variant)
    pos.requires_grad_(True)
    x.requires_grad_(True)
    forward, forward_backward = _passes(module, x, pos, edge_index)

    # peak memory of one forward+backward, on top of what is allocated now
    import gc
    forward()  # builds caches (e.g. the CSR of the fused op)
    gc.collect()
    base = _rss_kib("VmRSS")
    peak_ok = _reset_peak_rss()
    forward_backward()
    peak_mib = (_rss_kib("VmHWM") - base) / 1024 if peak_ok else float("nan")

    times = {"forward": [], "forward_backward": []}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        for _ in range(warmup if reps else 0):
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
        "hidden_dim": int(module.kernel.hidden_type.size) if hasattr(module, "kernel") else None,
        "forward_s": statistics.median(times["forward"]) if reps else None,
        "forward_backward_s": statistics.median(times["forward_backward"]) if reps else None,
        "forward_samples": times["forward"], "forward_backward_samples": times["forward_backward"],
        "peak_extra_mib": peak_mib, "threads": torch.get_num_threads(),
    }


def interleaved_worker(config: str, variants: list, reps: int, warmup: int) -> list:
    """Times every variant in this one process, round-robin: each round runs each
    variant's forward, then each variant's forward+backward."""
    import torch
    built = {}
    for v in variants:
        module, x, pos, edge_index = build_variant(config, v)
        if built:  # every variant sees the very same graph and features
            x, pos, edge_index = first[1:]
        else:
            x.requires_grad_(True)
            pos.requires_grad_(True)
            first = (module, x, pos, edge_index)
        built[v] = _passes(module, x, pos, edge_index)
    samples = {v: {"forward": [], "forward_backward": []} for v in variants}
    for rnd in range(warmup + reps):
        for k, name in enumerate(("forward", "forward_backward")):
            for v in variants:
                t0 = time.perf_counter()
                built[v][k]()
                if rnd >= warmup:
                    samples[v][name].append(time.perf_counter() - t0)
    edge_index = first[3]
    return [{"config": config, "variant": v, "edges": int(edge_index.shape[1]),
             "nodes": int(first[1].shape[0]), "channels": int(first[1].shape[1]),
             "forward_s": statistics.median(samples[v]["forward"]),
             "forward_backward_s": statistics.median(samples[v]["forward_backward"]),
             "forward_samples": samples[v]["forward"],
             "forward_backward_samples": samples[v]["forward_backward"],
             "threads": torch.get_num_threads()} for v in variants]


# ---------------------------------------------------------------- driver side
def run_worker(config, variant, reps, warmup, timeout, interleaved=False):
    cmd = [sys.executable, __file__, "--interleaved-worker" if interleaved else "--worker",
           "--configs", config, "--variants", variant, "--reps", str(reps),
           "--warmup", str(warmup)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"config": config, "variant": variant, "error": f"timeout after {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("{", "["))]
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


def peers_markdown(rows, meta) -> str:
    out = [f"# Point convolutions side by side ({meta['machine']})", "",
           f"{meta['date']}, torch {meta['torch']}, {meta['threads']} threads. Times: median "
           f"of {meta['reps']} rounds after {meta['warmup']} warm-up, all variants in one "
           "process, interleaved; peak extra memory of one forward+backward, each variant "
           "in its own process. Ratios against e3nn and escnn measured in this run: their "
           "time / variant time, their peak / variant peak (higher is better).", "",
           "| config | E | variant | forward [s] | fwd+bwd [s] | peak extra mem [MiB] "
           "| fwd vs e3nn | fwd+bwd vs e3nn | memory vs e3nn | fwd+bwd vs escnn "
           "| memory vs escnn |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["config"], r["variant"]): r for r in rows if "error" not in r}

    def ratio(r, peer, key):
        b = base.get((r["config"], peer))
        if not b or not r.get(key) or b.get(key) is None or r[key] != r[key]:
            return "n/a"
        return f"{b[key] / r[key]:.2f}x"
    for r in rows:
        if "error" in r:
            out.append(f"| {r['config']} | | {r['variant']} | error: {r['error']} |"
                       + " |" * 7)
            continue
        out.append(f"| {r['config']} | {r['edges']:,} | {r['variant']} | {r['forward_s']:.3f} | "
                   f"{r['forward_backward_s']:.3f} | {r['peak_extra_mib']:.0f} | "
                   f"{ratio(r, 'e3nn', 'forward_s')} | {ratio(r, 'e3nn', 'forward_backward_s')} | "
                   f"{ratio(r, 'e3nn', 'peak_extra_mib')} | "
                   f"{ratio(r, 'escnn', 'forward_backward_s')} | "
                   f"{ratio(r, 'escnn', 'peak_extra_mib')} |")
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


def run_peers(configs, variants, args) -> list:
    """Interleaved timing of all variants in one process, then each one's peak memory
    in a process of its own."""
    missing = [v for v in variants if v in PEER_VARIANTS and importlib.util.find_spec(v) is None]
    if missing:
        print(f"note: {', '.join(missing)} not installed (pip install -r "
              f"benchmarks/requirements.txt); skipping them")
        variants = [v for v in variants if v not in missing]
    rows = []
    for c in configs:
        print(f"[peers] {c}: timing {', '.join(variants)} interleaved ...", flush=True)
        timed = run_worker(c, ",".join(variants), args.reps, args.warmup, args.timeout,
                           interleaved=True)
        if isinstance(timed, dict):  # the worker failed
            rows += [dict(timed, variant=v) for v in variants]
            print(f"  error: {timed['error']}")
            continue
        for row in timed:
            print(f"[peers] {c} {row['variant']}: peak memory ...", flush=True)
            peak = run_worker(c, row["variant"], 0, 0, args.timeout)
            row["peak_extra_mib"] = peak.get("peak_extra_mib", float("nan"))
            if "error" in peak:
                row["peak_error"] = peak["error"]
            print(f"  forward {row['forward_s']:.3f}s  fwd+bwd {row['forward_backward_s']:.3f}s"
                  f"  peak +{row['peak_extra_mib']:.0f} MiB", flush=True)
            rows.append(row)
    return rows


def peers_plot(rows, path):
    """Ratios against e3nn (higher is better): forward and forward+backward speed-up,
    memory ratio, one group of bars per variant and configuration."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if "error" not in r]
    e3 = {r["config"]: r for r in ok if r["variant"] == "e3nn"}
    bars = [r for r in ok if r["config"] in e3 and r["variant"] != "e3nn"]
    if not bars:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    labels = [f"{r['config']} {r['variant']}" for r in bars]
    for ax, key, title in zip(axes, ("forward_s", "forward_backward_s", "peak_extra_mib"),
                              ("forward speed-up vs e3nn", "fwd+bwd speed-up vs e3nn",
                               "memory ratio vs e3nn (e3nn peak / peak)")):
        vals = [e3[r["config"]][key] / r[key] if r.get(key) else 0 for r in bars]
        ax.bar(range(len(bars)), vals, color=["C0" if "fused" in lb else "C2" for lb in labels])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(bars)), labels, rotation=20, ha="right")
        ax.set_title(title)
        if key == "peak_extra_mib":
            ax.set_yscale("log")
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}x", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=None, help="default S,2D,M (--peers: M)")
    parser.add_argument("--variants", default=None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=1800, help="per worker, seconds")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default=None,
                        help="stem of the result files (default bench_conv / bench_peers)")
    parser.add_argument("--peers", action="store_true",
                        help="compare with e3nn and escnn (default configs M, variants "
                             f"{PEERS_DEFAULT}; results bench_peers.*)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--interleaved-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # defaults depend on the mode
    args.configs = args.configs or ("M" if args.peers else "S,2D,M")
    args.variants = args.variants or (PEERS_DEFAULT if args.peers else ",".join(VARIANTS))
    args.name = args.name or ("bench_peers" if args.peers else "bench_conv")
    configs, variants = args.configs.split(","), args.variants.split(",")
    for c in configs:
        if c not in CONFIGS:
            parser.error(f"unknown config {c!r}; choose from {list(CONFIGS)}")
    for v in variants:
        if v.partition(":")[0] not in VARIANTS + PEER_VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {list(VARIANTS)} "
                         f"(optionally with ':<nonlinearity>') or the peers "
                         f"{list(PEER_VARIANTS)}")
    if args.worker:
        print(json.dumps(worker(configs[0], variants[0], args.reps, args.warmup)))
        return
    if args.interleaved_worker:
        print(json.dumps(interleaved_worker(configs[0], variants, args.reps, args.warmup)))
        return

    import torch
    from pyg_implicit import ops
    if "fused" in variants and not ops.is_available():
        print("note: the compiled extension is not available; skipping the fused variant")
        variants = [v for v in variants if v.partition(":")[0] != "fused"]
    if args.peers:
        rows = run_peers(configs, variants, args)
    else:
        rows = []
    for c in configs if not args.peers else ():
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
    table = (peers_markdown if args.peers else markdown)(rows, meta)
    (out / f"{args.name}.md").write_text(table)
    (peers_plot if args.peers else plot)(rows, out / f"{args.name}.png")
    print()
    print(table)


if __name__ == "__main__":
    main()
