"""Peer point convolutions at matched irreps/field types (docs/design.md §4a).

Each builder returns a module called as ``conv(x, pos, edge_index)`` on the same
tensors as :class:`pyg_implicit.ImplicitPointConv`, so the benchmark times all
of them with one loop:

- ``e3nn``: e3nn's convolution recipe (as in e3nn's ``Convolution`` examples and
  NequIP): spherical harmonics of the edge vector up to ``l = band_limit``, a
  radial MLP ``8 -> 64 -> 64 -> weights`` on a smooth one-hot embedding of the
  length, a fully connected tensor product with per-edge weights, a sum over the
  incoming edges divided by ``sqrt(num_neighbors)``.
- ``escnn``: escnn's ``R3PointConv`` (analytic steerable kernel basis sampled per
  edge, messages through PyG's ``MessagePassing``, mean aggregation), at its
  default rings and frequency cut-off for the given ``width``.
- ``cuequivariance`` (GPU only): cuEquivariance's
  ``FullyConnectedTensorProductConv`` with the same radial MLP.

The field type of the configurations is ``k x (scalar + vector)`` of O(3); its
e3nn irreps are ``k x 0e + k x 1o`` (the vector of O(3) is odd under inversion).
These libraries are benchmark-only dependencies (``benchmarks/requirements.txt``).
"""
from __future__ import annotations

import torch

PEERS = ("e3nn", "escnn", "cuequivariance")


def field_sizes(ftype) -> list[int]:
    """Sizes of the fields of an escnn field type (1: scalar, 3: vector of O(3))."""
    return [rep.size for rep in ftype.representations]


def _o3_irreps(sizes: list[int]) -> tuple[str, list[int]]:
    """e3nn irreps of O(3) fields of the given sizes (1: scalar, 3: vector), grouped as
    an e3nn user writes them (``k x 0e + m x 1o``), and the channel permutation into
    that order.

    e3nn handles interleaved irreps (``1x0e+1x1o+1x0e+...``) as one path per pair of
    segments; its backward then costs ~15x more (one zero-filled gradient per slice,
    measured), so grouping is what a user would do and what the peer does."""
    scalars, vectors, start = [], [], 0
    for size in sizes:
        if size == 1:
            scalars.append(start)
        elif size == 3:
            vectors.extend(range(start, start + 3))
        else:
            raise ValueError(f"peer benchmarks support scalar and vector fields, got size {size}")
        start += size
    parts = [f"{len(scalars)}x0e"] * bool(scalars) + [f"{len(vectors) // 3}x1o"] * bool(vectors)
    return "+".join(parts), scalars + vectors


class _RadialTensorProductConv(torch.nn.Module):
    """What e3nn's recipe and cuEquivariance's convolution share: the grouped irreps and
    channel permutations, spherical harmonics up to ``lmax`` and the radial embedding
    (``radial_basis`` smooth one-hot functions of the length up to ``max_radius``)."""

    def __init__(self, in_sizes: list[int], out_sizes: list[int], lmax: int, max_radius: float,
                 num_neighbors: float, radial_basis: int = 8):
        super().__init__()
        from e3nn import o3
        (self.irreps_in, in_perm), (self.irreps_out, out_perm) = (_o3_irreps(in_sizes),
                                                                  _o3_irreps(out_sizes))
        self.register_buffer("in_perm", torch.tensor(in_perm))
        self.register_buffer("out_unperm", torch.tensor(out_perm).argsort())
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.radial_basis, self.max_radius = radial_basis, max_radius
        self.num_neighbors = num_neighbors

    def edge_features(self, pos, edge_index):
        """Spherical harmonics [E, (lmax + 1)^2] and radial embedding [E, radial_basis]."""
        from e3nn import o3
        from e3nn.math import soft_one_hot_linspace
        src, dst = edge_index
        vec = pos[src] - pos[dst]
        sh = o3.spherical_harmonics(self.irreps_sh, vec, True, normalization="component")
        emb = soft_one_hot_linspace(vec.norm(dim=1), 0.0, self.max_radius, self.radial_basis,
                                    basis="smooth_finite", cutoff=True)
        return sh, emb.mul(self.radial_basis ** 0.5)

    def forward(self, x, pos, edge_index):
        sh, emb = self.edge_features(pos, edge_index)
        out = self.convolve(x[:, self.in_perm], sh, emb, edge_index)
        return out[:, self.out_unperm].div(self.num_neighbors ** 0.5)


class E3nnConv(_RadialTensorProductConv):
    """e3nn's convolution recipe between O(3) fields of sizes ``in_sizes``, ``out_sizes``:
    a radial MLP ``radial_basis -> radial_hidden -> radial_hidden -> weights`` (SiLU), a
    fully connected tensor product with those per-edge weights, a sum at the targets."""

    def __init__(self, in_sizes: list[int], out_sizes: list[int], lmax: int, max_radius: float,
                 num_neighbors: float, radial_basis: int = 8, radial_hidden: int = 64):
        super().__init__(in_sizes, out_sizes, lmax, max_radius, num_neighbors, radial_basis)
        from e3nn import o3
        from e3nn.nn import FullyConnectedNet
        self.tp = o3.FullyConnectedTensorProduct(o3.Irreps(self.irreps_in), self.irreps_sh,
                                                 o3.Irreps(self.irreps_out),
                                                 shared_weights=False)
        self.radial = FullyConnectedNet([radial_basis, radial_hidden, radial_hidden,
                                         self.tp.weight_numel], torch.nn.functional.silu)

    def convolve(self, x, sh, emb, edge_index):
        src, dst = edge_index
        messages = self.tp(x[src], sh, self.radial(emb))
        return x.new_zeros(x.shape[0], messages.shape[1]).index_add_(0, dst, messages)


class EscnnConv(torch.nn.Module):
    """escnn's ``R3PointConv`` on plain tensors."""

    def __init__(self, in_type, out_type, width: float):
        super().__init__()
        from escnn import nn as enn
        self.conv = enn.R3PointConv(in_type, out_type, width=width, n_rings=3)
        self.in_type = in_type

    def forward(self, x, pos, edge_index):
        from escnn import nn as enn
        return self.conv(enn.GeometricTensor(x, self.in_type, coords=pos), edge_index).tensor


class CuEquivarianceConv(_RadialTensorProductConv):
    """cuEquivariance's fused convolution with the same radial MLP (GPU only)."""

    def __init__(self, in_sizes: list[int], out_sizes: list[int], lmax: int, max_radius: float,
                 num_neighbors: float, radial_basis: int = 8, radial_hidden: int = 64):
        super().__init__(in_sizes, out_sizes, lmax, max_radius, num_neighbors, radial_basis)
        import cuequivariance as cue
        from cuequivariance_torch.layers import FullyConnectedTensorProductConv
        self.conv = FullyConnectedTensorProductConv(
            cue.Irreps("O3", self.irreps_in), cue.Irreps("O3", str(self.irreps_sh)),
            cue.Irreps("O3", self.irreps_out),
            mlp_channels=[radial_basis, radial_hidden, radial_hidden],
            mlp_activation=torch.nn.SiLU(), layout=cue.mul_ir)  # e3nn's layout

    def convolve(self, x, sh, emb, edge_index):
        src, dst = edge_index
        return self.conv(x, sh, emb, ((src, dst), (x.shape[0], x.shape[0])))


def build_peer(name: str, in_type, out_type, band_limit: int, width: float,
               num_neighbors: float, max_radius: float) -> torch.nn.Module:
    """The peer ``name`` between ``in_type`` and ``out_type``: escnn field types, or
    (for e3nn and cuEquivariance, which need no escnn) lists of O(3) field sizes."""
    sizes = lambda t: t if isinstance(t, (list, tuple)) else field_sizes(t)  # noqa: E731
    if name == "e3nn":
        return E3nnConv(sizes(in_type), sizes(out_type), band_limit, max_radius, num_neighbors)
    if name == "escnn":
        return EscnnConv(in_type, out_type, width)
    if name == "cuequivariance":
        return CuEquivarianceConv(sizes(in_type), sizes(out_type), band_limit, max_radius,
                                  num_neighbors)
    raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")


def matched_max_radius(pos: torch.Tensor, edge_index: torch.Tensor) -> float:
    """The longest edge (slightly enlarged): the radial cut-off of e3nn's embedding."""
    lengths = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=1)
    return float(lengths.max()) * 1.01 if lengths.numel() else 1.0


__all__ = ["PEERS", "build_peer", "field_sizes", "matched_max_radius"]
