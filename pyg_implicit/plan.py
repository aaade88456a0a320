r"""The *plan*: an implicit kernel MLP lowered to a short list of dense ops.

Every backend (plain torch here, C++ in ``csrc/cpu``, CUDA in ``csrc/cuda``)
evaluates exactly this structure, so they agree to rounding error.

For an edge ``e = (j -> i)`` with edge vector ``x_e = pos_src[j] - pos_dst[i]``
(``d`` entries) and edge attributes ``a_e`` (``A`` entries, possibly 0):

.. code-block:: text

    u_0 = [x_e, a_e]                                   (H_0 = d + A)
    for l = 1 .. L:                                    (L = len(weights))
        z_l = W_l u_{l-1} + b_l                        (W_l: [H'_l, H_{l-1}])
        if Q_l is empty:                               (pointwise activation)
            u_l = act_l(z_l)                           (H_l = H'_l)
        else:                                          (Fourier activation)
            Z = z_l.view(M_l, F_l)                     (F_l = Q_l.shape[1])
            u_l = (act_l(Z @ Q_l^T) @ P_l^T).view(-1)  (Q_l: [G_l, F_l],
                                                        P_l: [F'_l, G_l],
                                                        H_l = M_l * F'_l)
    s_e = exp(-|x_e|^2 / (2 width^2))                  (radial envelope)
    g_e = [s_e * u_L, s_e]                             (H + 1 entries, H = H_L)
    K_e = (Wt.view(C_out, H + 1, C_in) * g_e[None, :, None]).sum(1)
    out_i = sum_{e -> i} K_e f_j = Wt @ vec(sum_{e -> i} g_e (x) f_j)

``vec`` is row-major: ``vec(A)[k * C_in + c] = A[k, c]``. ``Wt`` already holds
the last layer's weight and bias and the normalisation constant. Activation
codes are the integers of :data:`ACTIVATIONS`. Nothing couples two edges.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F

#: activation name -> integer code used by the compiled ops
ACTIVATIONS = {"elu": 0, "relu": 1, "silu": 2, "tanh": 3, "sigmoid": 4}
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

    All tensors share one dtype and device. ``samplers[l]``/``projectors[l]``
    are empty tensors (``numel() == 0``) for a pointwise activation.
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

    @property
    def hidden_dim(self) -> int:
        return self.Wt.shape[1] // self.in_channels - 1

    def tensors(self) -> List[torch.Tensor]:
        return [*self.weights, *self.biases, *self.samplers, *self.projectors,
                self.width, self.Wt]

    def to(self, *args, **kwargs) -> "KernelPlan":
        conv = lambda t: t.to(*args, **kwargs)  # noqa: E731
        return KernelPlan(
            [conv(t) for t in self.weights], [conv(t) for t in self.biases],
            [conv(t) for t in self.samplers], [conv(t) for t in self.projectors],
            list(self.activations), conv(self.width), conv(self.Wt),
            self.pos_dim, self.attr_dim, self.in_channels, self.out_channels,
            dict(self.extra))


def apply_activation(z: torch.Tensor, code: int, sampler: torch.Tensor,
                     projector: torch.Tensor) -> torch.Tensor:
    """One activation of the plan on a batch ``z`` of shape ``[E, H']``."""
    fn = _ACT_FN[int(code)]
    if sampler.numel() == 0:
        return fn(z)
    E = z.shape[0]
    F = sampler.shape[1]
    Z = z.reshape(E, z.shape[1] // F, F)  # [E, M, F]; explicit sizes: E may be 0
    Y = fn(torch.matmul(Z, sampler.t()))  # [E, M, G]
    return torch.matmul(Y, projector.t()).reshape(E, z.shape[1] // F * projector.shape[0])


def hidden_features(plan: KernelPlan, edge_vec: torch.Tensor,
                    edge_attr: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``g_e`` of the module docstring for every edge: ``[E, H + 1]``."""
    u = edge_vec if edge_attr is None or edge_attr.shape[-1] == 0 else \
        torch.cat([edge_vec, edge_attr], dim=-1)
    for W, b, Q, P, code in zip(plan.weights, plan.biases, plan.samplers,
                                plan.projectors, plan.activations):
        u = apply_activation(torch.addmm(b, u, W.t()), code, Q, P)
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
