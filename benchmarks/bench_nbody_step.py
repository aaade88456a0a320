"""Time of one N-body training step (docs/design.md §4a): the default model of
``python -m pyg_implicit.train nbody`` (charged, O(3)), a batch of 10 systems of 5
particles (fully connected graphs with self loops), loss, backward and an Adam
step: tiny graphs, so per-call overheads dominate.

    python benchmarks/bench_nbody_step.py [--steps 30] [--warmup 5] [--profile]

Prints one JSON line (median and all step times). To compare two versions of the
code in one run, call it alternately with each tree first on ``PYTHONPATH``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build(seed: int = 0):
    from pyg_implicit.experiments.nbody import train as nbody
    from pyg_implicit.experiments.nbody.model import NBodyModel, fully_connected_edges

    parser = argparse.ArgumentParser()
    nbody.add_options(parser)
    args, _ = parser.parse_known_args(["--data", "unused"])
    torch.manual_seed(seed)
    model = NBodyModel(**nbody.model_config(args, "charged"))
    n_sys, n = args.batch_size, 5
    batch = dict(pos=torch.randn(n_sys * n, 3), vel=torch.randn(n_sys * n, 3),
                 charges=torch.randint(0, 2, (n_sys * n,)).float() * 2 - 1,
                 edge_index=fully_connected_edges(n_sys, n))
    target = batch["pos"] + batch["vel"] + 0.1 * torch.randn(n_sys * n, 3)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        pred = model(batch["pos"], batch["vel"], batch["charges"], batch["edge_index"])
        loss = nbody.position_loss(pred, target, args.huber_delta)
        loss.backward()
        opt.step()
        return float(loss)
    return model, step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table")
    args = parser.parse_args(argv)
    model, step = build()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if args.profile:
        from torch.profiler import profile
        with profile() as prof:
            for _ in range(5):
                step()
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
    print(json.dumps({"step_s": statistics.median(times), "samples": times,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
