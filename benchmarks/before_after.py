"""Before/after timings of two checkouts of this project, measured in one run.

    python benchmarks/before_after.py --old /path/to/old/checkout [--rounds 3]

The old checkout needs its extension built in place (``python setup.py
build_ext --inplace``). Each round runs, for each checkout in turn, the fused
layer at configurations S and M (``bench_conv.py --worker``: median forward and
forward+backward) and one N-body training step (``bench_nbody_step.py``), every
measurement in a fresh process with that checkout first on ``PYTHONPATH`` (this
checkout's benchmark scripts drive both). Alternating the two keeps the VM's
load changes from favouring either. Writes ``benchmarks/results/<name>.{json,md}``
with per-round values, medians over rounds and the ratios old / new.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _json_line(stdout: str):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def measure(tree: Path, what: str, reps: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if what == "nbody_step":
        cmd = [sys.executable, str(HERE / "bench_nbody_step.py"), "--steps", str(steps)]
    else:
        cmd = [sys.executable, str(HERE / "bench_conv.py"), "--worker", "--configs", what,
               "--variants", "fused", "--reps", str(reps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    row = _json_line(proc.stdout)
    if proc.returncode != 0 or row is None:
        raise RuntimeError(f"{what} in {tree} failed: {proc.stderr[-2000:]}")
    if what == "nbody_step":
        return {"step_s": row["step_s"]}
    return {"forward_s": row["forward_s"], "forward_backward_s": row["forward_backward_s"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="the other checkout (extension built in place)")
    ap.add_argument("--old-label", default="old")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per layer measurement")
    ap.add_argument("--steps", type=int, default=30, help="timed N-body steps per measurement")
    ap.add_argument("--what", default="S,M,nbody_step")
    ap.add_argument("--name", default="cpu_before_after")
    args = ap.parse_args(argv)
    trees = {args.old_label: Path(args.old).resolve(), "new": ROOT}
    whats = args.what.split(",")
    rounds = []
    for r in range(args.rounds):
        for what in whats:
            for label, tree in trees.items():
                res = measure(tree, what, args.reps, args.steps)
                rounds.append({"round": r, "what": what, "tree": label, **res})
                print(json.dumps(rounds[-1]), flush=True)
    summary = {}
    for what in whats:
        keys = ["step_s"] if what == "nbody_step" else ["forward_s", "forward_backward_s"]
        for key in keys:
            med = {label: statistics.median(x[key] for x in rounds
                                            if x["what"] == what and x["tree"] == label)
                   for label in trees}
            summary[f"{what} {key}"] = {**med, "ratio": med[args.old_label] / med["new"]}
    meta = {"machine": f"{platform.node()} CPU, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d %H:%M"), "old": str(trees[args.old_label]),
            "rounds": args.rounds, "reps": args.reps, "steps": args.steps}
    out = HERE / "results"
    (out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "rounds": rounds}, indent=1))
    lines = [f"# Before / after ({meta['machine']})", "",
             f"{meta['date']}; old: `{meta['old']}`; {args.rounds} alternating rounds, medians "
             f"over rounds (layer: median of {args.reps} runs each; N-body: of {args.steps} "
             "steps). Ratio: old time / new time.", "",
             f"| measurement | {args.old_label} [s] | new [s] | ratio |", "|---|---|---|---|"]
    for k, v in summary.items():
        lines.append(f"| {k} | {v[args.old_label]:.4f} | {v['new']:.4f} | {v['ratio']:.2f}x |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
