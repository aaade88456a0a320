"""Validation utilities: equivariance of layers and kernels, in float64.

``check_equivariance`` transforms positions, features and edge attributes by
group elements and compares the output with the transformed output.
``check_kernel_constraint`` samples a kernel at points and verifies the
steerability constraint ``K(g x) = rho_out(g) K(x) rho_in(g)^T``; for SO(2),
O(2), SO(3), O(3) ``kernel_basis_residual`` also projects the sampled kernel
onto escnn's analytical steerable basis and reports what is left over.
"""
from __future__ import annotations

import copy
import random
from typing import Callable, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from escnn import nn as enn
from escnn.group import GroupElement, Representation

Elements = Union[str, Sequence[GroupElement]]


def _matrix(rep: Representation, g: GroupElement, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(rep(g)), dtype=like.dtype, device=like.device)


def _directsum(reps: Sequence[Representation], g: GroupElement, like: torch.Tensor):
    mats = [_matrix(r, g, like) for r in reps]
    return torch.block_diag(*mats) if mats else like.new_zeros(0, 0)


def group_elements(group, elements: Elements = "random", num: int = 8,
                   exact: Optional[Sequence[GroupElement]] = None,
                   seed: int = 0) -> List[GroupElement]:
    """Group elements to test with.

    ``elements`` is ``"random"`` (``num`` random elements of the group, or of
    ``exact`` when given: the elements a module is exactly equivariant to),
    ``"testing"`` (escnn's ``testing_elements``, capped at ``num`` random picks)
    or an explicit list.
    """
    rng = random.Random(seed)
    if not isinstance(elements, str):
        return list(elements)
    if elements == "random":
        if exact is not None and len(exact) > 0:
            return [rng.choice(list(exact)) for _ in range(num)]
        if not group.continuous:
            return [rng.choice(list(group.elements)) for _ in range(num)]
        np.random.seed(rng.randrange(2 ** 31))
        return [group.sample() for _ in range(num)]
    if elements == "testing":
        testing = list(group.testing_elements())
        if exact is not None and len(exact) > 0:
            testing = [g for g in testing if any(g == e for e in exact)] or list(exact)
        return testing if len(testing) <= num else rng.sample(testing, num)
    raise ValueError(f"elements must be 'random', 'testing' or a list, got {elements!r}")


def check_equivariance(module: Callable, in_type: enn.FieldType, out_type: enn.FieldType,
                       x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor,
                       edge_attr: Optional[torch.Tensor] = None,
                       edge_attr_type: Optional[Sequence[Representation]] = None,
                       elements: Elements = "random", num: int = 8, seed: int = 0,
                       exact: Optional[Sequence[GroupElement]] = None) -> float:
    """Max relative equivariance error of ``module(x, pos, edge_index, edge_attr)``.

    Positions transform by the gspace's action on R^d, ``x`` by ``in_type``,
    ``edge_attr`` by ``edge_attr_type`` (a FieldType or list of representations),
    the output by ``out_type``. For a layer, ``exact`` defaults to the kernel's
    exact elements (the grid symmetries of a Fourier nonlinearity).
    Returns ``max_g |f(g.in) - g.f(in)| / max|f(in)|``.
    """
    gspace = in_type.gspace
    G = gspace.fibergroup
    if exact is None:
        kernel = getattr(module, "kernel", None)
        exact = getattr(kernel, "exact_elements", None)
    attr_reps = [] if edge_attr_type is None else list(
        getattr(edge_attr_type, "representations", edge_attr_type))

    def transformed(g):
        R = _matrix(gspace.basespace_action, g, pos)
        attr_g = None
        if edge_attr is not None:
            attr_g = edge_attr @ _directsum(attr_reps, g, edge_attr).t()
        return module(x @ _directsum(in_type.representations, g, x).t(), pos @ R.t(),
                      edge_index, attr_g)

    return _worst_error(module(x, pos, edge_index, edge_attr), transformed, out_type,
                        group_elements(G, elements, num, exact, seed))


def _worst_error(y: torch.Tensor, transformed: Callable, out_type: enn.FieldType,
                 elements: Sequence[GroupElement]) -> float:
    """``max_g |transformed(g) - rho_out(g) y| / max|y|``."""
    scale = y.abs().max().clamp_min(torch.finfo(y.dtype).tiny)
    worst = 0.0
    for g in elements:
        rho_out = _directsum(out_type.representations, g, y)
        worst = max(worst, float(((transformed(g) - y @ rho_out.t()).abs().max()
                                  / scale).detach()))
    return worst


def check_kernel_constraint(kernel, num_points: int = 64, elements: Elements = "random",
                            num: int = 8, seed: int = 0,
                            dtype: torch.dtype = torch.float64) -> float:
    """Max relative violation of ``K(gx, ga) = rho_out(g) K(x, a) rho_in(g)^T``.

    ``kernel`` is an :class:`~pyg_implicit.ImplicitKernel` (kept in its dtype;
    cast it to float64 for tight checks).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_points, kernel.pos_dim, generator=gen, dtype=dtype)
    a = torch.randn(num_points, kernel.attr_dim, generator=gen, dtype=dtype)
    x, a = x.to(kernel.scale.device), a.to(kernel.scale.device)
    K = kernel(x, a)
    scale = K.abs().max()
    worst = 0.0
    for g in group_elements(kernel.group, elements, num, kernel.exact_elements, seed):
        R = _matrix(kernel.gspace.basespace_action, g, x)
        rin = _directsum(kernel.in_type.representations, g, K)
        rout = _directsum(kernel.out_type.representations, g, K)
        ra = _directsum(kernel.attr_reps, g, a)
        K_g = kernel(x @ R.t(), a @ ra.t() if kernel.attr_dim else a)
        worst = max(worst, float((K_g - rout @ K @ rin.t()).abs().max().detach() / scale))
    return worst


def kernel_basis_residual(kernel, radius: float = 1.0, band_limit: int = 6,
                          num_points: int = 200, seed: int = 0) -> float:
    """Relative residual of the sampled kernel after projection on escnn's
    analytical steerable basis (SO(2), O(2), SO(3), O(3); no edge attributes).

    Samples ``K`` at ``num_points`` points of the sphere/circle of ``radius``
    and least-squares fits the span of the steerable kernel basis of
    ``Hom(in_type, out_type)`` with angular band limit ``band_limit``;
    returns ``|K - proj K| / |K|``. A correct steerable kernel gives ~0; a
    generic (non-equivariant) matrix function gives O(1).
    """
    from escnn import kernels
    if kernel.attr_dim:
        raise ValueError("kernel_basis_residual needs a kernel without edge attributes")
    G = kernel.group
    gspace = kernel.gspace
    name = G.name
    if name not in ("SO(2)", "O(2)", "SO(3)", "O(3)"):
        raise ValueError(f"kernel_basis_residual supports SO(2), O(2), SO(3), O(3); got {name}")
    action = gspace.basespace_action
    rng = np.random.RandomState(seed)
    pts = rng.randn(num_points, kernel.pos_dim)
    pts = radius * pts / np.linalg.norm(pts, axis=1, keepdims=True)
    dtype = kernel.scale.dtype
    x = torch.as_tensor(pts, dtype=dtype, device=kernel.scale.device)
    with torch.no_grad():
        K = kernel(x, x.new_zeros(num_points, 0)).cpu().double().numpy()  # [P, Co, Ci]
    residual2, total2 = 0.0, float((K ** 2).sum())
    o0 = 0
    for ro in kernel.out_type.representations:
        c0 = 0
        for ri in kernel.in_type.representations:
            # a float64 copy: escnn caches its bases and compares them by value
            basis = copy.deepcopy(
                _steerable_basis(G, action, ri, ro, radius, band_limit, kernels)).double()
            B = basis.sample(torch.as_tensor(pts, dtype=torch.float64)).numpy()  # [P, num_basis, dim_out, dim_in]
            B = np.transpose(B, (0, 2, 3, 1)).reshape(num_points * ro.size * ri.size, -1)
            target = K[:, o0:o0 + ro.size, c0:c0 + ri.size].reshape(-1)
            if B.shape[1] == 0:
                residual2 += float((target ** 2).sum())
            else:
                coef, *_ = np.linalg.lstsq(B, target, rcond=None)
                residual2 += float(((B @ coef - target) ** 2).sum())
            c0 += ri.size
        o0 += ro.size
    return float(np.sqrt(residual2 / max(total2, 1e-300)))


def _steerable_basis(G, action, ri, ro, radius, band_limit, kernels):
    """escnn's analytical steerable basis on a sphere/circle of given radius."""
    name = G.name
    if name in ("SO(2)", "O(2)"):
        dim = action.size
        if dim == 2:
            fn = kernels.kernels_SO2_act_R2 if name == "SO(2)" else kernels.kernels_O2_act_R2
        else:
            raise ValueError("kernel_basis_residual supports SO(2)/O(2) on R^2 only")
        return fn(ri, ro, radii=[radius], sigma=[1.0], maximum_frequency=band_limit)
    fn = kernels.kernels_SO3_act_R3 if name == "SO(3)" else kernels.kernels_O3_act_R3
    return fn(ri, ro, radii=[radius], sigma=[1.0], maximum_frequency=band_limit)


def check_node_equivariance(module: Callable, in_type: enn.FieldType,
                            out_type: enn.FieldType, x: torch.Tensor,
                            elements: Elements = "random", num: int = 8, seed: int = 0,
                            exact: Optional[Sequence[GroupElement]] = None,
                            **kwargs) -> float:
    """Max relative equivariance error of a per-node block ``module(x, **kwargs)``.

    ``x`` transforms by ``in_type``, the output by ``out_type`` (node features have no
    positions, so only the group acts). ``exact`` defaults to the module's
    ``exact_elements`` (the grid symmetries of a Fourier nonlinearity).
    Returns ``max_g |f(rho_in(g) x) - rho_out(g) f(x)| / max|f(x)|``.
    """
    G = in_type.fibergroup
    if exact is None:
        exact = getattr(module, "exact_elements", None)
    return _worst_error(
        module(x, **kwargs),
        lambda g: module(x @ _directsum(in_type.representations, g, x).t(), **kwargs),
        out_type, group_elements(G, elements, num, exact, seed))
