"""A freshly built layer maps unit-variance inputs to outputs of std in [0.3, 3]."""
import pytest
import torch
from escnn import nn as enn

from helpers import GROUPS, gspace
from pyg_implicit import ImplicitPointConv


def knn_edges(pos, k):
    dist = torch.cdist(pos, pos)
    dist.fill_diagonal_(float("inf"))
    nbr = dist.topk(k, largest=False).indices  # [N, k] sources of each target
    dst = torch.arange(pos.shape[0]).repeat_interleave(k)
    return torch.stack([nbr.reshape(-1), dst])


@pytest.mark.parametrize("name,width,k", [("C4", 0.3, 16), ("SO2", 0.1, 8), ("O3", 0.2, 16),
                                          ("octa", 0.5, 24), ("SO2z", 0.2, 16)])
def test_output_std_at_init(name, width, k):
    gs = gspace(name)
    G = gs.fibergroup
    in_type = enn.FieldType(gs, [G.trivial_representation, gs.basespace_action] * 4)
    out_type = enn.FieldType(gs, [G.trivial_representation, gs.basespace_action] * 3)
    kwargs = {k_: v for k_, v in GROUPS[name][1].items() if k_ != "grid"}
    conv = ImplicitPointConv(in_type, out_type, width=width, num_neighbors=k,
                             backend="factorized", **kwargs)
    torch.manual_seed(0)
    pos = torch.rand(400, gs.dimensionality)
    x = torch.randn(400, in_type.size)
    with torch.no_grad():
        std = float(conv(x, pos, knn_edges(pos, k)).std())
    assert 0.3 <= std <= 3.0, std
