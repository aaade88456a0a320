r"""Implicit-kernel model for the charged N-body task.

:class:`NBodyModel` predicts particle positions ``T`` steps ahead from the
current positions, velocities and charges (see
:mod:`pyg_implicit.experiments.nbody.data`). It is a stack of
:class:`~pyg_implicit.ImplicitPointConv` layers over the fully connected
particle graph **with self loops** (the kernel at relative position 0 is a
learned self-interaction, constrained like every other kernel value).

Symmetry groups (the ``group`` argument) and their escnn gspaces:

============  ===============================  ===========================================
``group``     gspace                           symmetries (besides translations)
============  ===============================  ===========================================
``"o3"``      ``flipRot3dOnR3()``              all rotations and reflections, O(3)
``"so3"``     ``rot3dOnR3()``                  all rotations, SO(3)
``"so2z"``    ``rot2dOnR3()``                  rotations about z, SO(2)
``"o2z"``     ``conicalOnR3()``                rotations about z and mirrors in planes
                                               containing z, O(2); z is fixed
                                               (``fullCylindricalOnR3()`` would add
                                               z -> -z, which a field along z breaks)
``"octa"``    ``octaOnR3()``                   the 24 rotations of the cube (axes x, y, z)
``"fullocta"`` ``fullOctaOnR3()``              the 48 symmetries of the cube, O_h: every
                                               permutation and sign flip of the axes
============  ===============================  ===========================================

The Coulomb physics of ``charged`` is O(3)-symmetric, but the published simulator
clips every Cartesian force component at 100 (close encounters, ``r < ~0.1``), and
that commutes only with permuting and flipping the axes: the data's exact symmetry
group is O_h (``fullocta``; tested in ``tests/test_nbody.py``), and O(3), SO(3) and
the groups about z are each only partly symmetries of it: the targets' variance over
rotations is a floor that no exactly O(3)-equivariant predictor can beat
(``benchmarks/nbody_rotation_floor.py`` measures it; ``benchmarks/results/`` has the
numbers). ``fullocta`` kernels have to learn the rest of the rotation symmetry from
data. For ``charged-field`` ``so2z`` and ``o2z`` are the symmetries of the physics,
and O(3)/SO(3) models are over-constrained (they cannot even represent the field's
direction).

For the finite groups the kernel MLPs use regular fields with a pointwise
nonlinearity (exactly equivariant); ``hidden_channels`` then counts regular fields
of 24 or 48 dimensions (6 of them match the 288-dimensional hidden features of the
O(3) default, 16 band-limited fields).

Every field type is built for O(3) and *restricted* to the chosen subgroup,
so the models of different groups have identical feature sizes and differ
only in the equivariance constraint of their kernels.

Per layer (``h`` node features: ``s`` scalars, ``v`` vectors of the standard
representation of O(3), ``t`` optional l = 2 fields), built from the blocks of
:mod:`pyg_implicit.nn`:

.. code-block:: text

    hn = norm(h)                                               EquivariantLayerNorm(mode="node")
    m_ij = K2(x_ij, a_ij) gate(K1(x_ij, a_ij) [hn_j, hn_i])
    dh_i = gate(sum_j m_ij)                                    gate: EquivariantNonlinearity("gated")
    h <- h + dh                                                (residual)
    p <- p + sum_k w_k dh_vk + c * vel                         (position update)

with ``x_ij = p_j - p_i``, ``a_ij`` the edge attributes at the current positions
and every ``K`` an implicit kernel (an equivariant MLP of ``x_ij`` and
``a_ij``). The messages (SEGNN-like: nonlinear in both endpoints, conditioned
on the geometry in both layers) are the two convolutions of an
:class:`~pyg_implicit.ImplicitPointConv` pair over the "edge graph" (edge
``e`` -> edge ``e``, source position ``p_j``, target position ``p_i``). ``gate``
applies SiLU to the scalars and multiplies every vector (l = 2 field) by the
sigmoid of its own scalar gate, which the convolutions produce in front of the
fields. ``norm`` standardises the scalars over channels and divides each l > 0
block by the RMS of its field norms, with learnable per-field scales.
``p`` starts at the input positions. The position update (EGNN-style,
learnable ``w``, ``c``, zero at initialisation) lets later layers interact at
extrapolated positions, like the steps of an integrator (``pos_updates=False``
switches it off).

Inputs: node features ``[|v|, v]`` (trivial, standard), with ``q`` in front
when ``node_charge=True``; edge attributes ``[q_src q_dst, |p_src - p_dst|]``
(trivial) plus ``v_src, v_dst`` (standard, ``velocity_attr=True``). By default
(``relative_velocity=True``) ``v`` is the velocity relative to the
centre-of-mass velocity ``V``. Output: ``p + a * v + delta + T * V`` with
``delta`` a standard-representation field from a final (linear) convolution
(times a learnable scalar, initially 0.1), ``a`` and ``T`` learnable scalars
(initially 1, the "linear" baseline), at the last updated positions ``p``.

Two exact symmetries of the physics besides E(3) and permutations are built
in by default: flipping every charge (the model sees charges only through
``q_i q_j``; not a symmetry with an external field, see ``node_charge``) and
Galilean boosts ``v -> v + u`` (targets move by ``T u``; also with a constant
field).

Options removed with the rebuild on the :mod:`pyg_implicit.nn` blocks (linear
messages, Coulomb, closest-approach and axis-aware edge attributes, a force node
feature, field dropout) are documented with their runs in
``benchmarks/results/RESULTS_LOG.md``.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch

GROUPS = ("o3", "so3", "so2z", "o2z", "octa", "fullocta")
AXIAL_GROUPS = ("so2z", "o2z")  # the groups that fix the z axis (the field of charged-field)
_GSPACE_FN = {"o3": "flipRot3dOnR3", "so3": "rot3dOnR3", "so2z": "rot2dOnR3",
              "o2z": "conicalOnR3", "octa": "octaOnR3", "fullocta": "fullOctaOnR3"}


def make_gspace(group: str):
    """The escnn gspace on R^3 for a group name in :data:`GROUPS`."""
    from escnn import gspaces

    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    return getattr(gspaces, _GSPACE_FN[group])()


def _restrict(ftype, group: str):
    """Restrict an O(3) field type to the subgroup named ``group``."""
    if group == "o3":
        return ftype
    return ftype.restrict(make_gspace(group)._sg_id)


def _instantiate_irreps(G, max_frequency: int) -> None:
    """Create the SO(2)/O(2) irreps up to ``max_frequency`` up front: escnn builds them
    lazily and otherwise fails to decompose tensor products of restricted l = 2 fields
    ("Did not find sufficient irreps ...")."""
    from escnn import group as egroup

    if isinstance(G, egroup.SO2):
        for k in range(max_frequency + 1):
            G.irrep(k)
    elif isinstance(G, egroup.O2):
        G.irrep(0, 0)
        for k in range(max_frequency + 1):
            G.irrep(1, k)


def fully_connected_edges(num_graphs: int, n: int, self_loops: bool = True,
                          device=None) -> torch.Tensor:
    """``edge_index`` [2, B * n * n'] of ``num_graphs`` fully connected graphs of ``n`` nodes
    (``n' = n`` with self loops, ``n - 1`` without), nodes numbered graph by graph."""
    idx = torch.arange(n, device=device)
    src = idx.repeat_interleave(n)
    dst = idx.repeat(n)
    if not self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    off = (torch.arange(num_graphs, device=device) * n).repeat_interleave(src.numel())
    return torch.stack([src.repeat(num_graphs) + off, dst.repeat(num_graphs) + off])


class NBodyModel(torch.nn.Module):
    r"""Implicit steerable-kernel network for N-body position prediction.

    Args:
        group: ``"o3"``, ``"so3"``, ``"so2z"``, ``"o2z"``, ``"octa"`` or ``"fullocta"``
            (see module docstring).
        num_layers: number of hidden layers (a final convolution to the output
            vector comes on top).
        scalars, vectors, tensors: multiplicities of the hidden l = 0, l = 1
            (standard) and l = 2 fields.
        hidden_channels, hidden_layers, band_limit: kernel-MLP size, passed to
            :class:`~pyg_implicit.ImplicitPointConv`.
        velocity_attr: also give ``v_src``, ``v_dst`` to the kernels as vector
            edge attributes.
        width: initial width of the kernels' Gaussian radial envelope.
        num_neighbors: incoming edges per node (with the self loop), for the
            kernels' initial normalisation.
        pos_updates: move the positions seen by the next layers after each hidden
            layer by a learned combination of its vector outputs and the velocity.
        node_charge: give the charge ``q_i`` to the first layer as a node feature.
            Without it the model sees charges only through ``q_i q_j`` and is exactly
            invariant under flipping every charge, a symmetry of the physics without
            an external field. An external field couples to each ``q_i`` and breaks it:
            keep ``node_charge=True`` for ``charged-field`` (``train`` does so).
        relative_velocity: the network sees velocities relative to the mean
            velocity of each node's neighbours (the centre-of-mass velocity on the
            fully connected graph), and the output adds ``T * mean velocity`` with a
            learnable ``T`` (initially 1): the model is then covariant under Galilean
            boosts ``v -> v + u``, which move the targets by ``T u`` exactly.
        conv_kwargs: further keyword arguments of the convolution (e.g. ``backend``).

    Shapes:
        ``forward(pos [N, 3], vel [N, 3], charges [N] or [N, 1], edge_index [2, E])
        -> [N, 3]`` predicted positions.
    """

    def __init__(self, group: str = "o3", num_layers: int = 4, scalars: int = 16,
                 vectors: int = 8, tensors: int = 0, hidden_channels: int = 16,
                 hidden_layers: int = 2, band_limit: int = 2, velocity_attr: bool = True,
                 width: float = 2.0, num_neighbors: float = 5.0, pos_updates: bool = True,
                 node_charge: bool = False, relative_velocity: bool = True,
                 conv_kwargs: Optional[Dict] = None):
        super().__init__()
        from escnn import gspaces

        from pyg_implicit.nn import (EquivariantLayerNorm, EquivariantNonlinearity,
                                     ImplicitPointConv)

        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.group = group
        self.config = dict(group=group, num_layers=num_layers, scalars=scalars, vectors=vectors,
                           tensors=tensors, hidden_channels=hidden_channels,
                           hidden_layers=hidden_layers, band_limit=band_limit,
                           velocity_attr=velocity_attr, width=width,
                           num_neighbors=num_neighbors, pos_updates=pos_updates,
                           node_charge=node_charge, relative_velocity=relative_velocity,
                           conv_kwargs=dict(conv_kwargs or {}))
        o3 = gspaces.flipRot3dOnR3()
        G = o3.fibergroup
        triv, vec, l2 = G.irrep(0, 0), G.standard_representation(), G.irrep(0, 2)
        self.scalars, self.vectors, self.tensors = scalars, vectors, tensors

        lmax = 2 if tensors else 1
        _instantiate_irreps(make_gspace(group).fibergroup, 2 * lmax + max(band_limit, 1) + 2)

        def ftype(*reps):
            return _restrict(o3.type(*reps), group)

        self.node_charge = node_charge
        self.in_type = ftype(*([triv] if node_charge else []), triv, vec)
        self.hidden_type = ftype(*([triv] * scalars + [vec] * vectors + [l2] * tensors))
        self.out_type = ftype(vec)
        self.velocity_attr = velocity_attr
        self.edge_attr_type = ftype(triv, triv, *([vec, vec] if velocity_attr else []))
        self.gspace = self.in_type.gspace
        # SiLU on the scalars, a sigmoid gate per vector / l = 2 field; the convolutions
        # produce [gates, hidden fields]
        self.gate = EquivariantNonlinearity(self.hidden_type, "gated", "silu")
        self.gated_type = self.gate.in_type

        kw = dict(hidden_channels=hidden_channels, hidden_layers=hidden_layers)
        kw.update(conv_kwargs or {})
        params = inspect.signature(ImplicitPointConv.__init__).parameters
        accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for name, value in (("band_limit", band_limit), ("width", width),
                            ("num_neighbors", num_neighbors)):
            if name in params or accepts_kwargs:
                kw.setdefault(name, value)

        # per edge, gate(K1(x_ij, a_ij) [h_j, h_i]) then K2(x_ij, a_ij), both convolutions
        # over the "edge graph" (edge e -> edge e), summed at i
        self.convs = torch.nn.ModuleList()
        self.message_convs = torch.nn.ModuleList()
        t_in = self.in_type
        for _ in range(num_layers):
            pair = t_in + t_in  # [h_j, h_i]
            self.convs.append(ImplicitPointConv(pair, self.gated_type, self.edge_attr_type,
                                                **{**kw, "num_neighbors": 1.0}))
            self.message_convs.append(ImplicitPointConv(
                self.hidden_type, self.gated_type, self.edge_attr_type, **kw))
            t_in = self.hidden_type
        self.out_conv = ImplicitPointConv(self.hidden_type, self.out_type, self.edge_attr_type,
                                          **kw)
        self.vel_coef = torch.nn.Parameter(torch.ones(()))
        self.relative_velocity = relative_velocity
        if relative_velocity:  # the horizon T: a boost by u moves the targets by T u
            self.mean_vel_coef = torch.nn.Parameter(torch.ones(()))
        # pre-norms of the hidden layers 2..L and of the output convolution
        self.norms = torch.nn.ModuleList(
            [EquivariantLayerNorm(self.hidden_type, mode="node") for _ in range(num_layers)])
        self.out_scale = torch.nn.Parameter(torch.tensor(0.1))
        # position updates: after hidden layer l, the positions the next convolutions
        # see move by sum_k w_lk v'_k + c_l vel (v'_k the layer's new vector fields), an
        # equivariant vector, so later layers interact at extrapolated positions (as
        # EGNN's coordinate updates); zero-initialised, i.e. static positions at first
        self.pos_updates = pos_updates
        if pos_updates:
            if vectors < 1:
                raise ValueError("pos_updates needs vectors >= 1")
            self.update_weights = torch.nn.Parameter(torch.zeros(num_layers, vectors))
            self.update_vel = torch.nn.Parameter(torch.zeros(num_layers))

    def __deepcopy__(self, memo):  # copies share the (immutable) escnn objects
        from pyg_implicit.nn.fields import deepcopy_sharing_escnn

        return deepcopy_sharing_escnn(self, memo)

    # ------------------------------------------------------------------ helpers
    def edge_attributes(self, pos, vel, charges, edge_index) -> torch.Tensor:
        src, dst = edge_index
        q = charges.reshape(-1)
        dist = (pos[src] - pos[dst]).norm(dim=-1, keepdim=True)
        attrs = [(q[src] * q[dst])[:, None], dist]
        if self.velocity_attr:
            attrs += [vel[src], vel[dst]]
        return torch.cat(attrs, dim=1)

    def _edge_graph(self, E: int, device) -> torch.Tensor:
        """``[2, E]`` edge index e -> e (cached, so the fused op reuses its CSR)."""
        key = (E, str(device))
        cache = self.__dict__.setdefault("_edge_graphs", {})
        if key not in cache:
            cache.clear()
            cache[key] = torch.arange(E, device=device).repeat(2, 1)
        return cache[key]

    def _layer(self, i: int, hn: torch.Tensor, p: torch.Tensor, edge_index: torch.Tensor,
               a: torch.Tensor) -> torch.Tensor:
        """Hidden layer ``i`` before its gate: aggregated messages at the targets."""
        src, dst = edge_index
        self_edges = self._edge_graph(src.numel(), src.device)
        pos_pair = (p[src], p[dst])
        m = self.gate(self.convs[i](torch.cat([hn[src], hn[dst]], dim=1), pos_pair,
                                    self_edges, a))
        m = self.message_convs[i](m, pos_pair, self_edges, a)
        return m.new_zeros(hn.shape[0], m.shape[1]).index_add_(0, dst, m)

    def forward(self, pos: torch.Tensor, vel: torch.Tensor, charges: torch.Tensor,
                edge_index: torch.Tensor) -> torch.Tensor:
        q = charges.reshape(-1, 1).to(pos.dtype)
        if self.relative_velocity:
            mean_vel = self._neighbour_mean(vel, edge_index)
            vel = vel - mean_vel
        x = torch.cat([q, vel.norm(dim=-1, keepdim=True), vel], dim=1)
        if not self.node_charge:  # only the products q_i q_j (edge attributes) remain
            x = x[:, 1:]
        a = self.edge_attributes(pos, vel, q, edge_index)
        p = pos
        h = None
        for i in range(len(self.convs)):
            hn = x if i == 0 else self.norms[i - 1](h)
            dh = self.gate(self._layer(i, hn, p, edge_index, a))
            h = dh if i == 0 else h + dh
            if self.pos_updates:
                p = p + self._position_update(dh, vel, i)
                a = self.edge_attributes(p, vel, q, edge_index)
        L = len(self.convs)
        hn = self.norms[L - 1](h)
        delta = self.out_conv(hn, p, edge_index, a)
        out = p + self.vel_coef * vel + self.out_scale * delta
        return out + self.mean_vel_coef * mean_vel if self.relative_velocity else out

    @staticmethod
    def _neighbour_mean(vel: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Mean velocity over each node's incoming edges (the centre-of-mass velocity
        of a fully connected graph with self loops; zero at isolated nodes)."""
        src, dst = edge_index
        total = vel.new_zeros(vel.shape).index_add_(0, dst, vel[src])
        deg = vel.new_zeros(vel.shape[0]).index_add_(0, dst, vel.new_ones(dst.shape))
        return total / deg.clamp_min(1)[:, None]

    def _position_update(self, dh: torch.Tensor, vel: torch.Tensor, i: int) -> torch.Tensor:
        s, nv = self.scalars, self.vectors
        v = dh[:, s:s + 3 * nv].reshape(-1, nv, 3)
        return (v * self.update_weights[i][None, :, None]).sum(1) + self.update_vel[i] * vel
