"""Float64-exact equivariant bases for escnn's ``Linear`` modules.

escnn samples its linear bases in float32 (hard-coded), so a float64 model is
only equivariant to ~1e-8. Here every basis element (and the bias expansion) is
projected, in float64, onto the exact intertwiner space
``Hom_G(rho_in, rho_out)``: in the irrep coordinates of both representations
an intertwiner is zero between different irreps and lies in the irrep's
endomorphism algebra between equal ones. The float64 results are kept as
masters and written back after every dtype/device move, so ``.double()`` of a
float32 model is exact again.
"""
from __future__ import annotations

import copy

from typing import Dict, List, Tuple

import numpy as np
import torch
from escnn import nn as enn
from escnn.group import Representation


def _irrep_slices(rep: Representation) -> List[Tuple[tuple, slice]]:
    out, p = [], 0
    for irrep_id in rep.irreps:
        d = rep.group.irrep(*irrep_id).size
        out.append((irrep_id, slice(p, p + d)))
        p += d
    return out


def project_to_intertwiners(B: np.ndarray, rep_in: Representation,
                            rep_out: Representation) -> np.ndarray:
    """Orthogonal projection (in irrep coordinates) of ``B [k, o, i]`` onto
    ``{W : rho_out(g) W = W rho_in(g) for all g}``, in float64."""
    G = rep_in.group
    Bt = rep_out.change_of_basis_inv @ B.astype(np.float64) @ rep_in.change_of_basis
    out = np.zeros_like(Bt)
    slices_in = _irrep_slices(rep_in)
    for id_o, so in _irrep_slices(rep_out):
        for id_i, si in slices_in:
            if id_o != id_i:
                continue
            E = G.irrep(*id_o).endomorphism_basis()  # [m, d, d], orthogonal elements
            block = Bt[:, so, si]
            coef = np.einsum("kij,mij->km", block, E) / np.einsum("mij,mij->m", E, E)
            out[:, so, si] = np.einsum("km,mij->kij", coef, E)
    return rep_out.change_of_basis @ out @ rep_in.change_of_basis_inv


def _own_buffers(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``module`` with its own copies of its buffers."""
    own = copy.copy(module)
    own._buffers = {k: None if v is None else v.clone() for k, v in module._buffers.items()}
    own._modules = {k: _own_buffers(m) for k, m in module._modules.items()}
    return own


class ExactLinearBases:
    """Float64 masters of the bases of some escnn ``Linear`` modules."""

    def __init__(self, linears: List[enn.Linear]):
        self._masters: List[Tuple[torch.nn.Module, str, np.ndarray]] = []
        for lin in linears:
            self._add_linear(lin)
        self.restore()

    def _add_linear(self, lin: enn.Linear) -> None:
        reps_in = {r.name: r for r in lin.in_type.representations}
        reps_out = {r.name: r for r in lin.out_type.representations}
        expansion = lin.basisexpansion
        # escnn registers the blocks while iterating over sets, so their order, and that
        # of module.buffers(), would follow PYTHONHASHSEED; DDP broadcasts buffers by
        # position and would give each process another block's basis
        # escnn also caches the blocks per pair of representations, shared by every
        # Linear over the same types: `.to()` of one layer would convert the others
        blocks = sorted((name, _own_buffers(m)) for name, m in expansion._modules.items())
        expansion._modules.clear()
        expansion._modules.update(blocks)
        # its own index buffers are sometimes expanded views (stride 0), which
        # load_state_dict cannot copy into: own, dense copies
        for name, buf in list(expansion._buffers.items()):
            if buf is not None:
                expansion._buffers[name] = buf.clone(memory_format=torch.contiguous_format)
        for name_in, name_out in expansion._representations_pairs:
            block = getattr(expansion, f"block_expansion_{expansion._escape_pair((name_in, name_out))}")
            basis = block.sampled_basis.detach().cpu().double().numpy()  # [k, o, i, 1]
            exact = project_to_intertwiners(basis[..., 0], reps_in[name_in], reps_out[name_out])
            self._masters.append((block, "sampled_basis", exact[..., None]))
        if getattr(lin, "bias_expansion", None) is not None:
            trivial = lin.in_type.fibergroup.trivial_representation
            cols = []
            p = 0
            expansion_np = lin.bias_expansion.detach().cpu().double().numpy()  # [out, n]
            for rep in lin.out_type.representations:
                part = expansion_np[p:p + rep.size].T[:, :, None]  # [n, d, 1]
                cols.append(project_to_intertwiners(part, trivial, rep)[:, :, 0].T)
                p += rep.size
            self._masters.append((lin, "bias_expansion", np.concatenate(cols, axis=0)))

    def restore(self) -> None:
        """Write the float64-exact values into the (possibly moved) buffers."""
        with torch.no_grad():
            for module, name, master in self._masters:
                buf = getattr(module, name)
                buf.copy_(torch.from_numpy(master).to(dtype=buf.dtype, device=buf.device))


def fourier_masters(modules) -> List[Tuple[torch.nn.Module, str, np.ndarray]]:
    """Float64 copies of the sampling/projection buffers of Fourier modules
    (build those modules under a float64 default dtype for these to be exact)."""
    out = []
    for m in modules:
        for name in ("A", "Ainv"):
            if hasattr(m, name):
                out.append((m, name, getattr(m, name).detach().cpu().double().numpy()))
    return out


def restore_masters(masters: List[Tuple[torch.nn.Module, str, np.ndarray]]) -> None:
    """Write float64 masters (from :func:`fourier_masters`) into their (possibly moved)
    buffers."""
    with torch.no_grad():
        for module, name, master in masters:
            buf = getattr(module, name)
            buf.copy_(torch.from_numpy(master).to(buf))


def dense_gather_index(lin: enn.Linear) -> torch.Tensor:
    """See :func:`dense_gather`: the index alone."""
    return dense_gather(lin)[0]


def dense_gather(lin: enn.Linear) -> Tuple[torch.Tensor, int]:
    """``(index, pad)``: index that places escnn's expanded basis blocks into the dense matrix.

    ``W.view(-1) == cat([block.reshape(-1) for each io pair] + [0])[index]``; ``pad``
    is the position of the appended zero (the number of block entries).
    escnn's own ``expand_parameters`` slices with 0-d index tensors (``.item()``),
    which breaks ``torch.compile`` graphs; one gather does the same, traceably.
    """
    be = lin.basisexpansion
    n_out, n_in = be._output_size, be._input_size
    gather = torch.full((n_out * n_in,), -1, dtype=torch.long)
    offset = 0
    for io_pair in be._representations_pairs:
        key = be._escape_pair(io_pair)
        rows = getattr(be, f"out_indices_{key}")
        cols = getattr(be, f"in_indices_{key}")
        if be._n_pairs == 1 or be._contiguous[io_pair]:
            (o0, o1), (i0, i1) = (int(rows[0]), int(rows[1])), (int(cols[0]), int(cols[1]))
            dest = (torch.arange(o0, o1)[:, None] * n_in + torch.arange(i0, i1)[None, :])
        else:
            dest = rows.long().cpu() * n_in + cols.long().cpu()
        dest = dest.reshape(-1)
        gather[dest] = offset + torch.arange(dest.numel())
        offset += dest.numel()
    gather[gather < 0] = offset  # entries no basis element reaches: a zero
    return gather, offset


class InjectiveGather(torch.autograd.Function):
    """``src[index]`` for an index that uses each source entry at most once, apart
    from one padding entry (a constant zero, which gets no gradient).

    Autograd's generic backward of a gather is an accumulating scatter
    (``index_put_``, slow on CPU for the ~10^5-10^6 entries of a kernel's last
    layer); for an injective gather it is another gather, through ``inverse``."""

    @staticmethod
    def forward(src: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor):
        return src.index_select(0, index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        padded = torch.cat([grad.reshape(-1), grad.new_zeros(1)])
        return padded.index_select(0, inverse), None, None


def injective_gather_inverse(index: torch.Tensor, num_src: int, pad: int) -> torch.Tensor:
    """The ``inverse`` of :class:`InjectiveGather` for ``index`` into ``num_src``
    entries, where ``pad`` is the padding entry (gets no gradient); checks that the
    gather is injective."""
    real = index[index != pad]
    if torch.unique(real).numel() != real.numel():
        raise AssertionError("gather index is not injective")
    inverse = torch.full((num_src,), index.numel(), dtype=torch.long)
    positions = torch.arange(index.numel())[index != pad]
    inverse[real] = positions
    return inverse


def sparse_bias_index(lin: enn.Linear) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the nonzeros of ``lin.bias_expansion`` [out, n] (exact
    zeros after :class:`ExactLinearBases`): the expansion is mostly zeros (a bias
    only reaches the trivial components), so it is applied as a sparse sum."""
    if getattr(lin, "bias_expansion", None) is None:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    nz = (lin.bias_expansion.detach().cpu().double().abs() > 1e-12).nonzero()
    return nz[:, 0].clone(), nz[:, 1].clone()  # two buffers, not views of one storage


def expand_bias(lin: enn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``lin.bias_expansion @ lin.bias`` over the nonzeros ``(rows, cols)`` (zeros
    for a linear without bias)."""
    if lin.bias is None:
        return lin.weights.new_zeros(lin.basisexpansion._output_size)
    vals = lin.bias_expansion[rows, cols] * lin.bias[cols]
    return vals.new_zeros(lin.bias_expansion.shape[0]).index_add(0, rows, vals)


def linear_blocks(lin: enn.Linear) -> torch.Tensor:
    """escnn's expanded basis blocks of ``lin``, flattened, with a zero appended
    (the padding entry of :func:`dense_gather_index`)."""
    be = lin.basisexpansion
    blocks = [be._expand_block(lin.weights, io).reshape(-1) for io in be._representations_pairs]
    return torch.cat(blocks + [lin.weights.new_zeros(1)])


def expand_linear(lin: enn.Linear, gather: torch.Tensor, inverse: torch.Tensor = None,
                  bias_index: Tuple[torch.Tensor, torch.Tensor] = None):
    """``(W, b)`` of an escnn ``Linear``, equal to ``lin.expand_parameters()``
    (``inverse``: from :func:`injective_gather_inverse`, for the fast backward;
    ``bias_index``: from :func:`sparse_bias_index`)."""
    be = lin.basisexpansion
    flat = linear_blocks(lin)
    W = (flat.index_select(0, gather) if inverse is None else InjectiveGather.apply(flat, gather, inverse))
    W = W.view(be._output_size, be._input_size)
    if lin.bias is None:
        return W, None
    b = lin.bias_expansion @ lin.bias if bias_index is None else expand_bias(lin, *bias_index)
    return W, b
