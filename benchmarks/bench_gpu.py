"""GPU benchmark of the fused point convolution (docs/design.md §4).

Variants, each forward and forward+backward (median over CUDA-event-timed runs
after warm-up) with peak memory (torch.cuda.max_memory_allocated):

- reference:  materialised per-edge kernels (pyg_implicit.plan.edge_kernels),
              messages K_e f_j, index_add_ to targets;
- factorized: plain-torch factorisation g_e (x) f_j summed per target with
              index_add_, then A @ Wt^T (materialises E x (H+1) x C_in);
- fused:      torch.ops.pyg_implicit (csrc/cuda).

Configurations M, L and 2D of docs/design.md §4 with random plans of the right sizes
(no escnn needed): O(3) band limit 2 -> 16 fields x 9 dims = 144 hidden units
per layer, Fourier activation on a 120-point grid, two hidden layers; 2D:
SO(2) frequencies 0..2 -> 16 fields x 5 dims = 80 hidden units on a 16-point
grid, 8 x (1 + 2 + 2) = 40 channels. Graphs: random points in the unit cube
(square), k-nearest-neighbour graph (chunked cdist + topk on the GPU).

Beside each fused time: the roofline floor of docs/design.md §4 (datasheet H100
rates and rates measured here: an FP32 SGEMM with TF32 off and a device copy).
Also: the largest E each variant handles at configuration L's widths (random
graphs with 32 neighbours per node, forward+backward, doubling E until it runs
out of memory).

Writes benchmarks/results/gpu_bench.{json,md} (and copies them to $OUT if set).
Usage: python benchmarks/bench_gpu.py [--configs M,L,2D] [--reps 10] [--no-max-e]
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pyg_implicit, .plan and .ops import without escnn (absent on the GPU image)
from pyg_implicit.plan import ACTIVATIONS, KernelPlan, edge_kernels, hidden_features  # noqa: E402
from pyg_implicit.ops import build_csr, fused_point_conv, is_available  # noqa: E402

# docs/design.md §4
CONFIGS = {
    "M": dict(n=10_000, k=32, d=3, c=32, fields=16, dim=9, grid=120),
    "L": dict(n=100_000, k=32, d=3, c=64, fields=16, dim=9, grid=120),
    "2D": dict(n=20_000, k=16, d=2, c=40, fields=16, dim=5, grid=16),
}
H100 = dict(fp32_tflops=60.0, hbm_tbps=3.35)


# ---------------------------------------------------------------------------
# problem construction
# ---------------------------------------------------------------------------

def make_plan(cfg, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    d, M, F, G = cfg["d"], cfg["fields"], cfg["dim"], cfg["grid"]
    H = M * F
    c = cfg["c"]

    def rnd(*shape, fan_in=1):
        return torch.randn(*shape, generator=g) / math.sqrt(fan_in)

    weights = [rnd(H, d, fan_in=d), rnd(H, H, fan_in=H)]
    biases = [0.1 * rnd(H), 0.1 * rnd(H)]
    samplers = [rnd(G, F, fan_in=F), rnd(G, F, fan_in=F)]
    projectors = [rnd(F, G, fan_in=G), rnd(F, G, fan_in=G)]
    acts = [ACTIVATIONS["elu"], ACTIVATIONS["elu"]]
    Wt = rnd(c, (H + 1) * c, fan_in=(H + 1) * c)
    plan = KernelPlan(weights, biases, samplers, projectors, acts, torch.tensor(0.5), Wt,
                      pos_dim=d, attr_dim=0, in_channels=c, out_channels=c)
    return plan.to(device=device, dtype=dtype)


def knn_graph(pos, k, chunk=4096):
    """edge_index [2, N k]: the k nearest other points of each target (sources)."""
    n = pos.shape[0]
    srcs = []
    for i0 in range(0, n, chunk):
        d2 = torch.cdist(pos[i0:i0 + chunk], pos)
        idx = torch.arange(i0, min(i0 + chunk, n), device=pos.device)
        d2[torch.arange(idx.numel(), device=pos.device), idx] = float("inf")
        srcs.append(d2.topk(k, dim=1, largest=False).indices)
    src = torch.cat(srcs).reshape(-1)
    dst = torch.arange(n, device=pos.device).repeat_interleave(k)
    return torch.stack([src, dst])


def random_graph(n, k, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    src = torch.randint(0, n, (n * k,), device=device, generator=g)
    dst = torch.arange(n, device=device).repeat_interleave(k)
    return torch.stack([src, dst])


def make_problem(cfg, device, dtype=torch.float32, seed=0, graph="knn", n=None):
    n = n or cfg["n"]
    g = torch.Generator(device=device).manual_seed(seed)
    pos = torch.rand(n, cfg["d"], device=device, generator=g, dtype=dtype)
    x = torch.randn(n, cfg["c"], device=device, generator=g, dtype=dtype)
    ei = knn_graph(pos, cfg["k"]) if graph == "knn" else random_graph(n, cfg["k"], device, seed)
    return x, pos, ei


# ---------------------------------------------------------------------------
# variants: each returns out [N, C_out]
# ---------------------------------------------------------------------------

def run_reference(x, pos, ei, plan, csr=None):
    src, dst = ei[0], ei[1]
    K = edge_kernels(plan, pos[src] - pos[dst])  # [E, C_out, C_in]
    msg = torch.bmm(K, x[src].unsqueeze(-1)).squeeze(-1)
    return x.new_zeros(pos.shape[0], plan.out_channels).index_add_(0, dst, msg)


def run_factorized(x, pos, ei, plan, csr=None):
    src, dst = ei[0], ei[1]
    gfeat = hidden_features(plan, pos[src] - pos[dst])  # [E, H + 1]
    outer = (gfeat.unsqueeze(-1) * x[src].unsqueeze(1)).reshape(gfeat.shape[0], -1)
    A = x.new_zeros(pos.shape[0], outer.shape[1]).index_add_(0, dst, outer)
    return A @ plan.Wt.t()


def run_fused(x, pos, ei, plan, csr):
    return fused_point_conv(x, pos, pos, None, csr, plan)


_PEER_CACHE = {}


def _peer(name, x, pos, ei):
    """The peer convolution ``name`` (benchmarks/peers.py) at the problem's irreps:
    C = k x (scalar + vector) of O(3) in and out, e3nn's radial MLP, spherical
    harmonics up to l = 2 (the plans' band limit); built once per problem."""
    key = (name, tuple(x.shape), tuple(ei.shape), x.dtype, str(x.device))
    if key not in _PEER_CACHE:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import peers
        if pos.shape[1] != 3 or x.shape[1] % 4:
            raise ValueError(f"peer {name} needs 3-D positions and k x (1 + 3) channels")
        sizes = [1, 3] * (x.shape[1] // 4)
        radius = peers.matched_max_radius(pos, ei)
        _PEER_CACHE.clear()
        _PEER_CACHE[key] = peers.build_peer(name, sizes, sizes, 2, radius,
                                            ei.shape[1] / x.shape[0], radius).to(x.device, x.dtype)
    return _PEER_CACHE[key]


def run_e3nn(x, pos, ei, plan=None, csr=None):
    return _peer("e3nn", x, pos, ei)(x, pos, ei)


def run_cuequivariance(x, pos, ei, plan=None, csr=None):
    return _peer("cuequivariance", x, pos, ei)(x, pos, ei)


VARIANTS = {"reference": run_reference, "factorized": run_factorized, "fused": run_fused,
            "e3nn": run_e3nn, "cuequivariance": run_cuequivariance}
PEER_MODULES = {"e3nn": "e3nn", "cuequivariance": "cuequivariance_torch"}


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, warmup, reps):
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), times


def peak_bytes(fn, device):
    """(peak allocated during fn, allocated before fn) in bytes."""
    if device.type != "cuda":
        fn()
        return float("nan"), float("nan")
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), before


def is_oom(exc):
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "cuda error: out of memory" in msg


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# roofline (docs/design.md §4)
# ---------------------------------------------------------------------------

def mlp_flops_per_edge(plan):
    f = 0
    for W, Q, P in zip(plan.weights, plan.samplers, plan.projectors):
        f += 2 * W.shape[0] * W.shape[1] + W.shape[0]
        if Q.numel():
            M = W.shape[0] // Q.shape[1]
            f += 2 * M * Q.shape[0] * Q.shape[1] + 2 * M * P.shape[0] * P.shape[1]
            f += M * Q.shape[0]  # activation (counted as 1 flop)
    return f


def roofline(plan, n_src, n_dst, E, d, itemsize, rates):
    H1 = plan.hidden_dim + 1
    cin, cout = plan.in_channels, plan.out_channels
    mlp = mlp_flops_per_edge(plan)
    fwd_flops = E * (mlp + 2 * H1 * cin) + n_dst * 2 * H1 * cin * cout
    # backward: recompute the MLP, back-propagate (2 GEMMs per forward GEMM),
    # dg/df per edge (2 x 2 (H+1) C_in), dA and dWt node GEMMs
    bwd_flops = E * (3 * mlp + 4 * H1 * cin) + n_dst * 4 * H1 * cin * cout
    A = plan.attr_dim
    # inputs and output once, indices, plus the workspaces of the CUDA backend:
    # A = sum_e g_e (x) f_j per row written by the edge kernel and read by the
    # node GEMM ([N_dst, (H+1) C_in], write + read)
    io_bytes = itemsize * (n_src * (cin + d) + n_dst * (d + cout) + E * A) \
        + 8 * (E + n_dst + 1)
    workspace = itemsize * n_dst * H1 * cin
    fwd_bytes = io_bytes + 2 * workspace
    # backward: inputs again and the input gradients, dA = dout Wt in two
    # layouts and the recomputed A (write + read each), per-edge dF [E, C_in]
    # and dX [E, d] (write + gathered read) and grad edge_attr [E, A] (write)
    bwd_bytes = (io_bytes + itemsize * (n_src * (cin + d) + n_dst * d + E * A)
                 + 6 * workspace + 2 * itemsize * E * (cin + d) + 8 * (E + n_src + 1))
    out = {}
    for name, (tflops, tbps) in rates.items():
        f_fwd = max(fwd_flops / (tflops * 1e12), fwd_bytes / (tbps * 1e12)) * 1e3
        f_all = max((fwd_flops + bwd_flops) / (tflops * 1e12),
                    (fwd_bytes + bwd_bytes) / (tbps * 1e12)) * 1e3
        out[name] = dict(fwd_ms=f_fwd, fwd_bwd_ms=f_all)
    out["fwd_gflop"] = fwd_flops / 1e9
    out["fwd_bwd_gflop"] = (fwd_flops + bwd_flops) / 1e9
    out["fwd_mbytes"] = fwd_bytes / 1e6
    out["fwd_bwd_mbytes"] = (fwd_bytes + bwd_bytes) / 1e6
    out["workspace_mbytes"] = workspace / 1e6
    return out


def measure_ceilings(device):
    """Measured FP32 (no TF32) SGEMM rate and device-copy bandwidth."""
    if device.type != "cuda":
        return None
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        n = 8192
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        ms, _ = time_ms(lambda: a @ b, device, 3, 10)
        tflops = 2 * n ** 3 / (ms * 1e-3) / 1e12
        del a, b
        x = torch.randn(256 * 1024 * 1024, device=device)  # 1 GiB
        y = torch.empty_like(x)
        ms, _ = time_ms(lambda: y.copy_(x), device, 3, 10)
        tbps = 2 * x.numel() * 4 / (ms * 1e-3) / 1e12
        del x, y
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
        free()
    return dict(fp32_tflops=tflops, hbm_tbps=tbps)


# ---------------------------------------------------------------------------
# benchmark of one configuration
# ---------------------------------------------------------------------------

def bench_config(name, cfg, device, dtype, warmup, reps, rates, variants):
    print(f"\n=== config {name}: N={cfg['n']} k={cfg['k']} d={cfg['d']} C={cfg['c']} "
          f"H={cfg['fields'] * cfg['dim']} grid={cfg['grid']}", flush=True)
    x, pos, ei = make_problem(cfg, device, dtype)
    plan = make_plan(cfg, dtype, device)
    csr = build_csr(ei, x.shape[0], x.shape[0])
    E = ei.shape[1]
    res = dict(config=name, N=cfg["n"], E=E, C=cfg["c"], H=plan.hidden_dim, grid=cfg["grid"],
               roofline=roofline(plan, x.shape[0], x.shape[0], E, cfg["d"],
                                 x.element_size(), rates),
               variants={})
    g_out = torch.randn(x.shape[0], plan.out_channels, device=device, dtype=dtype)
    ref_out = None
    for vname in variants:
        fn = VARIANTS[vname]
        r = {}
        try:
            with torch.no_grad():
                out = fn(x, pos, ei, plan, csr)
            if vname == "factorized":
                ref_out = out.detach().double()
            elif vname == "fused" and ref_out is not None:
                r["rel_err_vs_factorized"] = ((out.double() - ref_out).norm()
                                              / ref_out.norm()).item()
            del out
            free()

            def fwd():
                with torch.no_grad():
                    fn(x, pos, ei, plan, csr)

            leaves = [x.detach().requires_grad_(True), pos.detach().requires_grad_(True)]
            ptens = [t.detach().requires_grad_(True) for t in plan.tensors()]
            plan_g = plan.with_tensors(ptens)

            # a peer: its own parameters instead of the plan's
            wrt = ptens if vname not in PEER_MODULES else list(
                _peer(vname, x, pos, ei).parameters())

            def fwd_bwd():
                out = fn(leaves[0], leaves[1], ei, plan_g, csr)
                torch.autograd.backward(out, g_out, inputs=leaves + wrt)
                for t in leaves + wrt:
                    t.grad = None

            r["fwd_ms"], r["fwd_all_ms"] = time_ms(fwd, device, warmup, reps)
            r["fwd_peak_bytes"], r["fwd_base_bytes"] = peak_bytes(fwd, device)
            r["fwd_bwd_ms"], r["fwd_bwd_all_ms"] = time_ms(fwd_bwd, device, warmup, reps)
            r["fwd_bwd_peak_bytes"], r["fwd_bwd_base_bytes"] = peak_bytes(fwd_bwd, device)
            r["status"] = "ok"
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            r["status"] = "OOM"
            r["error"] = str(exc).splitlines()[0][:200]
        free()
        res["variants"][vname] = r
        if r["status"] == "ok":
            print(f"  {vname:10s} fwd {r['fwd_ms']:9.2f} ms  fwd+bwd {r['fwd_bwd_ms']:9.2f} ms  "
                  f"peak fwd {r['fwd_peak_bytes'] / 2**20:9.1f} MiB  fwd+bwd "
                  f"{r['fwd_bwd_peak_bytes'] / 2**20:9.1f} MiB", flush=True)
        else:
            print(f"  {vname:10s} {r['status']}: {r.get('error', '')}", flush=True)
    del x, pos, ei, csr, plan
    free()
    return res


def _max_e_trial(cfg, device, dtype, variant, n):
    """One forward+backward at n nodes; returns (E, seconds). Locals die on return."""
    x, pos, ei = make_problem(cfg, device, dtype, graph="random", n=n)
    plan = make_plan(cfg, dtype, device)
    csr = build_csr(ei, n, n) if variant == "fused" else None
    x.requires_grad_(True)
    pos.requires_grad_(True)
    sync(device)
    t0 = time.perf_counter()
    out = VARIANTS[variant](x, pos, ei, plan, csr)
    out.backward(torch.ones_like(out))
    sync(device)
    return ei.shape[1], time.perf_counter() - t0


def max_edges(cfg, device, dtype, variant, start_n, max_n, time_cap_s):
    """Largest E (random graph, k neighbours, config widths) for which one
    forward+backward of `variant` runs; doubles N until OOM / caps."""
    ok_e, fail_e, n = 0, None, start_n
    while n <= max_n:
        oom = False
        try:
            e, dt = _max_e_trial(cfg, device, dtype, variant, n)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            oom = True
        free()
        if oom:
            fail_e = n * cfg["k"]
            print(f"  max-E {variant:10s} E={fail_e:>11,d} OOM", flush=True)
            break
        ok_e = e
        print(f"  max-E {variant:10s} E={ok_e:>11,d} ok ({dt:.1f} s)", flush=True)
        if dt > time_cap_s:
            break
        n *= 2
    return dict(largest_ok_E=ok_e, first_oom_E=fail_e, capped=fail_e is None)


def to_markdown(report):
    lines = ["# GPU benchmark of the fused point convolution", "",
             f"device: {report['device']}, torch {report['torch']}, dtype {report['dtype']}, "
             f"median of {report['reps']} runs after {report['warmup']} warm-up runs "
             "(CUDA events)", ""]
    if report.get("measured_ceilings"):
        mc = report["measured_ceilings"]
        lines.append(f"measured ceilings: FP32 SGEMM (TF32 off) {mc['fp32_tflops']:.1f} "
                     f"TFLOP/s, device copy {mc['hbm_tbps']:.2f} TB/s; datasheet used: "
                     f"{H100['fp32_tflops']} TFLOP/s FP32, {H100['hbm_tbps']} TB/s")
        lines.append("")
    lines += ["| config | E | variant | fwd ms | fwd+bwd ms | peak fwd MiB | peak fwd+bwd MiB "
              "| floor fwd ms (datasheet / measured) | floor fwd+bwd ms |",
              "|---|---|---|---|---|---|---|---|---|"]
    for res in report["configs"]:
        rf = res["roofline"]
        for vname, r in res["variants"].items():
            if r["status"] != "ok":
                lines.append(f"| {res['config']} | {res['E']:,} | {vname} | {r['status']} | | | "
                             "| | |")
                continue
            floor = floor2 = ""
            if vname == "fused":
                floor = f"{rf['datasheet']['fwd_ms']:.2f}"
                floor2 = f"{rf['datasheet']['fwd_bwd_ms']:.2f}"
                if "measured" in rf:
                    floor += f" / {rf['measured']['fwd_ms']:.2f}"
                    floor2 += f" / {rf['measured']['fwd_bwd_ms']:.2f}"
            lines.append(
                f"| {res['config']} | {res['E']:,} | {vname} | {r['fwd_ms']:.2f} | "
                f"{r['fwd_bwd_ms']:.2f} | {r['fwd_peak_bytes'] / 2**20:.1f} | "
                f"{r['fwd_bwd_peak_bytes'] / 2**20:.1f} | {floor} | {floor2} |")
    lines.append("")
    lines.append("Ratios (reference / fused, factorized / fused):")
    lines.append("")
    for res in report["configs"]:
        v = res["variants"]
        f = v.get("fused", {})
        if f.get("status") != "ok":
            continue
        for other in ("reference", "factorized"):
            o = v.get(other, {})
            if o.get("status") == "ok":
                lines.append(
                    f"- {res['config']}: {other}/fused time fwd {o['fwd_ms'] / f['fwd_ms']:.1f}x, "
                    f"fwd+bwd {o['fwd_bwd_ms'] / f['fwd_bwd_ms']:.1f}x; peak memory fwd+bwd "
                    f"{o['fwd_bwd_peak_bytes'] / f['fwd_bwd_peak_bytes']:.1f}x")
            elif o:
                lines.append(f"- {res['config']}: {other} {o.get('status')} (fused fits)")
        if "rel_err_vs_factorized" in f:
            lines.append(f"- {res['config']}: fused vs factorized relative error "
                         f"{f['rel_err_vs_factorized']:.2e}")
        fl = res["roofline"]["datasheet"]["fwd_ms"]
        lines.append(f"- {res['config']}: fused forward / roofline floor (datasheet) = "
                     f"{f['fwd_ms'] / fl:.1f}x")
    if report.get("te_sweep"):
        ts = report["te_sweep"]
        lines += ["", f"Edge-tile sweep (fused, config {ts['config']}, PYG_IMPLICIT_CUDA_TE):",
                  "", "| TE | fwd ms | fwd+bwd ms |", "|---|---|---|"]
        for r in ts["results"]:
            if r["status"] == "ok":
                lines.append(f"| {r['te']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} |")
            else:
                lines.append(f"| {r['te']} | {r['status']} | |")
    if report.get("max_edges"):
        lines += ["", "Largest E handled (forward+backward, configuration L widths, random "
                  "graph with 32 neighbours):", ""]
        for vname, r in report["max_edges"].items():
            extra = (f"first OOM at E={r['first_oom_E']:,}" if r["first_oom_E"]
                     else "search capped (no OOM reached)")
            lines.append(f"- {vname}: E = {r['largest_ok_E']:,} ({extra})")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="M,L,2D")
    ap.add_argument("--variants", default="reference,factorized,fused")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the node counts (smoke tests)")
    ap.add_argument("--no-max-e", action="store_true")
    ap.add_argument("--max-e-cap", type=int, default=2 ** 27,
                    help="largest E tried in the max-E search")
    ap.add_argument("--max-e-time", type=float, default=30.0,
                    help="stop the max-E search after a run slower than this (s)")
    ap.add_argument("--te-sweep", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the fused op for edge tiles TE = 2, 4, 8, 16")
    ap.add_argument("--te-sweep-config", default="M")
    ap.add_argument("--unfused-configs", default=None,
                    help="configurations that also time the reference and factorized "
                         "variants (default: all of --configs); the others time fused only")
    ap.add_argument("--peers", action="store_true",
                    help="also time e3nn's and cuEquivariance's convolutions (those "
                         "installed) at matched irreps, on the 3-D configurations")
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--tag", default="",
                    help="suffix of the result files (gpu_bench_<tag>.json), e.g. for an A/B "
                         "run under other PYG_IMPLICIT_CUDA_* settings")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device")
    if not is_available():
        sys.exit("bench_gpu.py: pyg_implicit._C is not built")
    torch.backends.cuda.matmul.allow_tf32 = False
    variants = [v for v in args.variants.split(",") if v]
    if args.peers:
        import importlib.util
        for peer, module in PEER_MODULES.items():
            if importlib.util.find_spec(module) is None:
                print(f"note: {module} is not installed; no {peer} row")
            elif peer not in variants:
                variants.append(peer)

    report = dict(device=(torch.cuda.get_device_name(device) if device.type == "cuda"
                          else platform.processor() or "cpu"),
                  torch=torch.__version__, dtype=args.dtype, warmup=args.warmup,
                  reps=args.reps, configs=[], env={k: v for k, v in os.environ.items()
                                                   if k.startswith("PYG_IMPLICIT_")})
    rates = {"datasheet": (H100["fp32_tflops"], H100["hbm_tbps"])}
    mc = measure_ceilings(device)
    if mc:
        report["measured_ceilings"] = mc
        rates["measured"] = (mc["fp32_tflops"], mc["hbm_tbps"])
        print(f"measured: SGEMM {mc['fp32_tflops']:.1f} TFLOP/s, copy {mc['hbm_tbps']:.2f} TB/s")

    unfused = set((args.unfused_configs or args.configs).split(","))
    for name in args.configs.split(","):
        cfg = dict(CONFIGS[name])
        cfg["n"] = max(64, int(cfg["n"] * args.scale))
        names = variants if name in unfused else [v for v in variants
                                                  if v == "fused" or v in PEER_MODULES]
        if cfg["d"] != 3:  # the peers are O(3) convolutions
            names = [v for v in names if v not in PEER_MODULES]
        report["configs"].append(bench_config(name, cfg, device, dtype, args.warmup,
                                              args.reps, rates, names))

    if args.te_sweep and "fused" in variants:
        # edge-tile size of the CUDA kernels (PYG_IMPLICIT_CUDA_TE: the forward's
        # and the backward's; defaults 32 and 8; the kernels lower it further
        # when shared memory is short)
        name = args.te_sweep_config
        cfg = dict(CONFIGS[name])
        cfg["n"] = max(64, int(cfg["n"] * args.scale))
        print(f"\n=== edge-tile sweep (fused, config {name})", flush=True)
        sweep = []
        old_te = os.environ.get("PYG_IMPLICIT_CUDA_TE")
        for te in (4, 8, 16, 32, 64):
            os.environ["PYG_IMPLICIT_CUDA_TE"] = str(te)
            r = bench_config(name, cfg, device, dtype, args.warmup, args.reps, rates, ["fused"])
            fr = r["variants"]["fused"]
            sweep.append(dict(te=te, fwd_ms=fr.get("fwd_ms"), fwd_bwd_ms=fr.get("fwd_bwd_ms"),
                              status=fr["status"]))
        if old_te is None:
            os.environ.pop("PYG_IMPLICIT_CUDA_TE", None)
        else:
            os.environ["PYG_IMPLICIT_CUDA_TE"] = old_te
        report["te_sweep"] = dict(config=name, results=sweep)

    if not args.no_max_e:
        print("\n=== largest E at configuration L widths", flush=True)
        cfg = dict(CONFIGS["L"])
        start_n = max(64, int(3_125 * args.scale))  # E = 100k at k = 32
        max_n = max(start_n, args.max_e_cap // cfg["k"])
        report["max_edges"] = {v: max_edges(cfg, device, dtype, v, start_n, max_n,
                                            args.max_e_time) for v in variants}

    os.makedirs(args.out_dir, exist_ok=True)
    stem = "gpu_bench" + (f"_{args.tag}" if args.tag else "")
    report["cuda_settings"] = {k: v for k, v in os.environ.items()
                               if k.startswith("PYG_IMPLICIT_CUDA_")}
    js = os.path.join(args.out_dir, stem + ".json")
    md = os.path.join(args.out_dir, stem + ".md")
    with open(js, "w") as f:
        json.dump(report, f, indent=1)
    text = to_markdown(report)
    with open(md, "w") as f:
        f.write(text)
    if os.environ.get("OUT"):
        for p in (js, md):
            shutil.copy(p, os.environ["OUT"])
    print("\n" + text)


if __name__ == "__main__":
    main()
