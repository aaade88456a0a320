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


def dense_gather_index(lin: enn.Linear) -> torch.Tensor:
    """Index that places escnn's expanded basis blocks into the dense matrix.

    ``W.view(-1) == cat([block.reshape(-1) for each io pair] + [0])[index]``.
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
    return gather


def expand_linear(lin: enn.Linear, gather: torch.Tensor):
    """``(W, b)`` of an escnn ``Linear``, equal to ``lin.expand_parameters()``."""
    be = lin.basisexpansion
    blocks = [be._expand_block(lin.weights, io).reshape(-1) for io in be._representations_pairs]
    flat = torch.cat(blocks + [lin.weights.new_zeros(1)])
    W = flat[gather].view(be._output_size, be._input_size)
    b = lin.bias_expansion @ lin.bias if lin.bias is not None else None
    return W, b
