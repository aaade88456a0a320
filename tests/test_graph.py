"""Graph helpers over torch_cluster: brute-force agreement, batches, truncation warning."""
import warnings

import pytest
import torch

import torch_cluster  # noqa: F401  (a dependency: a missing build fails, never skips)

from pyg_implicit.graph import knn_graph, radius_graph


def _edge_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def _points(seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(60, 3, generator=gen)
    batch = torch.cat([torch.zeros(25, dtype=torch.long), torch.ones(35, dtype=torch.long)])
    return pos, batch


def test_radius_graph_matches_brute_force_within_each_graph():
    pos, batch = _points()
    r = 0.35
    edge_index = radius_graph(pos, r, batch, max_num_neighbors=100)
    dist = torch.cdist(pos, pos)
    same = batch[:, None] == batch[None, :]
    off_diag = ~torch.eye(60, dtype=torch.bool)
    j, i = torch.nonzero((dist <= r) & same & off_diag, as_tuple=True)
    assert _edge_set(edge_index) == _edge_set(torch.stack([j, i]))


def test_radius_graph_warns_when_neighbourhoods_are_truncated():
    pos, batch = _points(1)
    with pytest.warns(UserWarning, match="max_num_neighbors=3"):
        edge_index = radius_graph(pos, 0.5, batch, max_num_neighbors=3)
    assert int(torch.bincount(edge_index[1]).max()) <= 3


def test_radius_graph_is_quiet_when_nothing_is_truncated():
    pos, batch = _points(1)
    max_degree = int(torch.bincount(radius_graph(pos, 0.5, batch, max_num_neighbors=100,
                                                 warn=False)[1]).max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        edge_index = radius_graph(pos, 0.5, batch, max_num_neighbors=max_degree + 1)
    assert int(torch.bincount(edge_index[1]).max()) == max_degree


def test_knn_graph_sources_are_the_nearest_neighbours():
    pos, batch = _points(2)
    k = 4
    edge_index = knn_graph(pos, k, batch)
    assert edge_index.shape[1] == 60 * k
    dist = torch.cdist(pos, pos)
    dist[batch[:, None] != batch[None, :]] = float("inf")
    dist.fill_diagonal_(float("inf"))
    expected = dist.topk(k, largest=False).indices  # [N, k] sources of each target
    got = {i: set() for i in range(60)}
    for j, i in edge_index.t().tolist():
        got[i].add(j)
    for i in range(60):
        assert got[i] == set(expected[i].tolist()), i
    assert bool((batch[edge_index[0]] == batch[edge_index[1]]).all())


def test_bad_input():
    pos, batch = _points()
    with pytest.raises(ValueError, match="pos"):
        radius_graph(pos[:, None], 0.3)
    with pytest.raises(ValueError, match="batch"):
        knn_graph(pos, 3, batch[:10])
    with pytest.raises(ValueError, match="batch must be sorted"):
        knn_graph(pos, 3, batch.flip(0))
    with pytest.raises(ValueError, match="k"):
        knn_graph(pos, 0)
