r"""The *plan*: an implicit kernel MLP lowered to a short list of dense ops.

Every backend (plain torch here, C++ in ``csrc/cpu``, CUDA in ``csrc/cuda``)
evaluates exactly this structure, so they agree to rounding error.

For an edge ``e = (j -> i)`` with edge vector ``x_e = pos_src[j] - pos_dst[i]``
(``d`` entries) and edge attributes ``a_e`` (``A`` entries, possibly 0):

.. code-block:: text

    u_0 = [x_e, x_e (x) x_e, ..., x_e^(x)k, a_e]       (H_0 = d + d^2 + .. + d^k + A,
                                                        k = lift_degree, row-major
                                                        tensor powers)
    for l = 1 .. L:                                    (L = len(weights))
        z_l = W_l u_{l-1} + b_l                        (W_l: [H'_l, H_{l-1}])
        kind "pointwise":                              (Q_l, P_l, m_l, b~_l empty)
            u_l = act_l(z_l)                           (H_l = H'_l)
        kind "fourier":
            Z = z_l.view(M_l, F_l)                     (F_l = Q_l.shape[1])
            u_l = (act_l(Z @ Q_l^T) @ P_l^T).view(-1)  (Q_l: [G_l, F_l],
                                                        P_l: [F'_l, G_l],
                                                        H_l = M_l * F'_l)
        kind "gated":                                  (m_l: int64 [H_l], values
            gamma = z_l[:n], v = z_l[n:]                -1 or a gate in [0, n),
            u_l[i] = act_l(v[i])            if m_l[i] < 0    n = H'_l - H_l)
                     sigmoid(gamma[m_l[i]]) v[i]  otherwise
        kind "norm":                                   (m_l: int64 [H_l = H'_l],
            r_f = |z_l[m_l == f]|  per field f          -1 or a field f < F_l;
            u_l[i] = act_l(z_l[i])          if m_l[i] < 0    b~_l: [F_l] > 0)
                     relu(r_f - b~_f) / r_f z_l[i]   (f = m_l[i]; 0 if r_f^2 <= 1e-20)
    s_e = exp(-|x_e|^2 / (2 width^2))                  (radial envelope)
    g_e = [s_e * u_L, s_e]                             (H + 1 entries, H = H_L)
    K_e = (Wt.view(C_out, H + 1, C_in) * g_e[None, :, None]).sum(1)
    out_i = sum_{e -> i} K_e f_j = Wt @ vec(sum_{e -> i} g_e (x) f_j)

``vec`` is row-major: ``vec(A)[k * C_in + c] = A[k, c]``. ``Wt`` already holds
the last layer's weight and bias and the normalisation constant. Activation
codes are the integers of :data:`ACTIVATIONS`, layer kinds those of
:data:`LAYER_KINDS` (``m_l`` is ``plan.fields[l]``, ``b~_l``
``plan.field_biases[l]``). Nothing couples two edges.

Gated and norm layers (with the tensor-power lift, which gives the MLP the
angular frequencies a linear map of ``x_e`` alone cannot reach) are exactly
equivariant for every group; a Fourier layer only for the symmetries of its
grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

#: activation name -> integer code used by the compiled ops
ACTIVATIONS = {"elu": 0, "relu": 1, "silu": 2, "tanh": 3, "sigmoid": 4}
#: layer kind name -> integer code used by the compiled ops
LAYER_KINDS = {"pointwise": 0, "fourier": 1, "gated": 2, "norm": 3}
#: squared field norm at or below which a norm layer outputs 0 for the field
NORM_EPS2 = 1e-20
_ACT_FN = {
    0: F.elu,
    1: F.relu,
    2: F.silu,
    3: torch.tanh,
    4: torch.sigmoid,
}


@dataclass
class KernelPlan:
    """Plain tensors describing one implicit kernel (see module docstring).

    All float tensors share one dtype and device. ``samplers[l]``/``projectors[l]``
    are empty tensors (``numel() == 0``) unless layer ``l`` is a Fourier layer,
    ``fields[l]`` (int64) unless it is gated or norm, ``field_biases[l]`` unless
    it is norm. ``kinds``, ``fields`` and ``field_biases`` default to a plan of
    pointwise and Fourier layers (told apart by the sampler).
    """

    weights: List[torch.Tensor]
    biases: List[torch.Tensor]
    samplers: List[torch.Tensor]
    projectors: List[torch.Tensor]
    activations: List[int]
    width: torch.Tensor  # 0-d, > 0
    Wt: torch.Tensor  # [C_out, (H + 1) * C_in]
    pos_dim: int
    attr_dim: int
    in_channels: int
    out_channels: int
    extra: dict = field(default_factory=dict)
    kinds: Optional[List[int]] = None
    fields: Optional[List[torch.Tensor]] = None
    field_biases: Optional[List[torch.Tensor]] = None
    lift_degree: int = 1

    def __post_init__(self):
        L = len(self.weights)
        if self.kinds is None:
            self.kinds = [LAYER_KINDS["fourier"] if Q.numel() else LAYER_KINDS["pointwise"]
                          for Q in self.samplers]
        if self.fields is None:
            self.fields = [torch.empty(0, dtype=torch.long, device=self.Wt.device)
                           for _ in range(L)]
        if self.field_biases is None:
            self.field_biases = [self.Wt.new_empty(0) for _ in range(L)]

    @property
    def lifted_dim(self) -> int:
        """Length of the tensor-power lift of ``x_e`` (``d + d^2 + .. + d^k``)."""
        return sum(self.pos_dim ** m for m in range(1, self.lift_degree + 1))

    @property
    def hidden_dim(self) -> int:
        return self.Wt.shape[1] // self.in_channels - 1

    def tensors(self) -> List[torch.Tensor]:
        """The float tensors (everything a gradient can reach)."""
        return [*self.weights, *self.biases, *self.samplers, *self.projectors,
                *self.field_biases, self.width, self.Wt]

    def with_tensors(self, tensors) -> "KernelPlan":
        """This plan with its float tensors replaced (order of :meth:`tensors`)."""
        L = len(self.weights)
        t = list(tensors)
        return KernelPlan(t[:L], t[L:2 * L], t[2 * L:3 * L], t[3 * L:4 * L],
                          list(self.activations), t[5 * L], t[5 * L + 1], self.pos_dim,
                          self.attr_dim, self.in_channels, self.out_channels,
                          dict(self.extra), list(self.kinds),
                          [m.to(t[5 * L + 1].device) for m in self.fields],  # with the plan
                          t[4 * L:5 * L], self.lift_degree)

    def to(self, *args, **kwargs) -> "KernelPlan":
        return self.with_tensors([t.to(*args, **kwargs) for t in self.tensors()])


def apply_activation(z: torch.Tensor, code: int, sampler: torch.Tensor,
                     projector: torch.Tensor, kind: Optional[int] = None,
                     fields: Optional[torch.Tensor] = None,
                     field_biases: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One nonlinearity of the plan on a batch ``z`` of shape ``[E, H']``."""
    fn = _ACT_FN[int(code)]
    if kind == LAYER_KINDS["gated"]:
        return _gated(z, fn, fields)
    if kind == LAYER_KINDS["norm"]:
        return _norm(z, fn, fields, field_biases)
    if sampler.numel() == 0:
        return fn(z)
    E = z.shape[0]
    F = sampler.shape[1]
    Z = z.reshape(E, z.shape[1] // F, F)  # [E, M, F]; explicit sizes: E may be 0
    Y = fn(torch.matmul(Z, sampler.t()))  # [E, M, G]
    return torch.matmul(Y, projector.t()).reshape(E, z.shape[1] // F * projector.shape[0])


def _gated(z: torch.Tensor, fn, fields: torch.Tensor) -> torch.Tensor:
    n = z.shape[1] - fields.shape[0]
    v = z[:, n:]
    if n == 0:
        return fn(v)
    gate = torch.sigmoid(z[:, :n]).index_select(1, fields.clamp_min(0))
    return torch.where(fields < 0, fn(v), v * gate)


def _norm(z: torch.Tensor, fn, fields: torch.Tensor, field_biases: torch.Tensor
          ) -> torch.Tensor:
    if field_biases.numel() == 0:
        return fn(z)
    index = fields.clamp_min(0)
    member = (fields >= 0).to(z.dtype)
    sq = z.new_zeros(z.shape[0], field_biases.shape[0]).index_add_(
        1, index, z * z * member)
    norm = sq.clamp_min(NORM_EPS2).sqrt()
    scale = torch.where(sq > NORM_EPS2, torch.relu(norm - field_biases) / norm,
                        torch.zeros_like(norm))
    return torch.where(fields < 0, fn(z), z * scale.index_select(1, index))


def lift(edge_vec: torch.Tensor, degree: int) -> torch.Tensor:
    """``[x, x (x) x, ..., x^(x)degree]`` (row-major tensor powers): ``[E, d + .. + d^k]``."""
    powers, p = [edge_vec], edge_vec
    for _ in range(degree - 1):
        p = (p[:, :, None] * edge_vec[:, None, :]).reshape(edge_vec.shape[0], -1)
        powers.append(p)
    return powers[0] if degree == 1 else torch.cat(powers, dim=-1)


def hidden_features(plan: KernelPlan, edge_vec: torch.Tensor,
                    edge_attr: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``g_e`` of the module docstring for every edge: ``[E, H + 1]``."""
    u = lift(edge_vec, plan.lift_degree)
    if edge_attr is not None and edge_attr.shape[-1] != 0:
        u = torch.cat([u, edge_attr], dim=-1)
    for W, b, Q, P, code, kind, m, bf in zip(
            plan.weights, plan.biases, plan.samplers, plan.projectors, plan.activations,
            plan.kinds, plan.fields, plan.field_biases):
        u = apply_activation(torch.addmm(b, u, W.t()), code, Q, P, kind, m, bf)
    s = envelope(edge_vec, plan.width)
    return torch.cat([u * s[:, None], s[:, None]], dim=-1)


def envelope(edge_vec: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Gaussian radial envelope ``exp(-|x|^2 / (2 width^2))``."""
    return torch.exp(-0.5 * edge_vec.pow(2).sum(-1) / width.pow(2))


def edge_kernels(plan: KernelPlan, edge_vec: torch.Tensor,
                 edge_attr: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Materialised per-edge kernels ``[E, C_out, C_in]`` (the reference)."""
    g = hidden_features(plan, edge_vec, edge_attr)
    Wt3 = plan.Wt.view(plan.out_channels, -1, plan.in_channels)
    return torch.einsum("okc,ek->eoc", Wt3, g)
