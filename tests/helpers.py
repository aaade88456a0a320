"""Reusable test helpers: groups, field types and random graphs of the layer tests; the
command line of the experiments."""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import torch
from escnn import gspaces
from escnn import nn as enn

from op_cases import random_edge_index

# name -> (gspace factory, kernel kwargs that make equivariance exact on known elements)
GROUPS = {
    "C4": (lambda: gspaces.rot2dOnR2(4), {}),
    "D3": (lambda: gspaces.flipRot2dOnR2(3), {}),
    "flip2d": (lambda: gspaces.flip2dOnR2(), {}),
    "SO2": (lambda: gspaces.rot2dOnR2(-1), {}),
    "O2": (lambda: gspaces.flipRot2dOnR2(-1), {}),
    "inv3d": (lambda: gspaces.invOnR3(), {}),
    "mir3d": (lambda: gspaces.mirOnR3(), {}),
    "octa": (lambda: gspaces.octaOnR3(), {"hidden_channels": 2}),
    "full_octa": (lambda: gspaces.fullOctaOnR3(), {"hidden_channels": 1}),
    "ico": (lambda: gspaces.icoOnR3(), {"hidden_channels": 1}),
    "full_ico": (lambda: gspaces.fullIcoOnR3(), {"hidden_channels": 1}),
    "SO2z": (lambda: gspaces.rot2dOnR3(), {}),
    "O2_conical": (lambda: gspaces.conicalOnR3(), {}),
    "O2_dihedral": (lambda: gspaces.dihedralOnR3(), {}),
    "cylindrical": (lambda: gspaces.cylindricalOnR3(), {}),
    "full_cylindrical": (lambda: gspaces.fullCylindricalOnR3(), {}),
    "SO3": (lambda: gspaces.rot3dOnR3(), {"grid": "ico"}),
    "O3": (lambda: gspaces.flipRot3dOnR3(), {"grid": "ico"}),
}


@functools.lru_cache(maxsize=None)
def gspace(name: str):
    return GROUPS[name][0]()


def field_types(name: str, mixed: bool = True):
    """(in_type, out_type, attr_reps): mixed scalar/vector (and higher) fields, or uniform."""
    gs = gspace(name)
    G = gs.fibergroup
    triv, std = G.trivial_representation, gs.basespace_action
    if mixed:
        extra = [G.regular_representation] if not G.continuous and G.order() <= 8 else []
        in_type = enn.FieldType(gs, [triv, std, *extra, triv])
        out_type = enn.FieldType(gs, [std, triv, *extra])
    else:
        in_type = enn.FieldType(gs, [std, std])
        out_type = enn.FieldType(gs, [std, std])
    return in_type, out_type, [triv, std]


def random_graph(num_src: int, num_dst: int, num_edges: int, seed: int = 0,
                 dtype=torch.float64, pos_dim: int = 3, self_loops: bool = True):
    """Random positions and an unsorted edge_index (op_cases.random_edge_index)
    with self-loops and duplicated edges when ``self_loops`` and the graph is
    not bipartite (``num_src == num_dst``)."""
    gen = torch.Generator().manual_seed(seed)
    pos_src = torch.randn(num_src, pos_dim, generator=gen, dtype=dtype)
    pos_dst = torch.randn(num_dst, pos_dim, generator=gen, dtype=dtype)
    edge_index = random_edge_index(num_src, num_dst, num_edges, seed,
                                   self_loops=self_loops and num_src == num_dst)
    return pos_src, pos_dst, edge_index


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_cli(experiment: str, args, tmp_path, ok: bool = True) -> str:
    """Run ``python -m pyg_implicit.train <experiment> ARGS`` (one thread, no progress
    bars, ``HOME`` under ``tmp_path`` so that no cache outside it is touched); assert
    that it succeeds (or, with ``ok=False``, fails) and return its output."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", HOME=str(tmp_path / "home"))
    r = subprocess.run([sys.executable, "-m", "pyg_implicit.train", experiment, *args,
                        "--threads", "1", "--no-progress"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert (r.returncode == 0) == ok, out[-5000:]
    return out
