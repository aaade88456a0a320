r"""Implicit-kernel model for the charged N-body task.

:class:`NBodyModel` predicts particle positions ``T`` steps ahead from the
current positions, velocities and charges (see
:mod:`pyg_implicit.datasets.nbody`). It is a stack of
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
the groups about z are each only partly symmetries of it. On the ``charged`` test
split, rotating a system at random, simulating and rotating back moves the target
by a mean squared 0.0051; the variance of the target over rotations is 0.0026, a
floor that no exactly O(3)-equivariant predictor can beat and more than half the
O(3) model's test MSE (see ``benchmarks/results/RESULTS.md``). ``fullocta``
kernels have to learn the rest of the rotation symmetry from data;
``axis_attr=True`` instead keeps the kernels of ``group`` and breaks the symmetry
down to O_h through edge attributes that see the axes. For ``charged-field``
``so2z`` and ``o2z`` are the symmetries of the physics, and O(3)/SO(3) models are
over-constrained (they cannot even represent the field's direction).

For the finite groups the kernel MLPs use regular fields with a pointwise
nonlinearity (exactly equivariant); ``hidden_channels`` then counts regular fields
of 24 or 48 dimensions (6 of them match the 288-dimensional hidden features of the
O(3) default, 16 band-limited fields).

Every field type is built for O(3) and *restricted* to the chosen subgroup,
so the models of different groups have identical feature sizes and differ
only in the equivariance constraint of their kernels.

Per layer (``h`` node features: ``s`` scalars, ``v`` vectors of the standard
representation of O(3), ``t`` optional l = 2 fields; ``gate`` maps
``[s', g, v', t']`` to ``[silu(s'), sigmoid(g_v) * v', sigmoid(g_t) * t']``):

.. code-block:: text

    hn = norm(h)
    m_ij = K2(x_ij, a_ij) gate(K1(x_ij, a_ij) [hn_j, hn_i])   (messages="nonlinear")
      or   K(x_ij, a_ij) hn_j                                (messages="linear")
    dh_i = gate(sum_j m_ij)
    h <- h + dh                                               (residual)
    p <- p + sum_k w_k dh_vk + c * vel                        (position update)

with ``x_ij = p_j - p_i``, ``a_ij`` the edge attributes at the current positions
and every ``K`` an implicit kernel (an equivariant MLP of ``x_ij`` and
``a_ij``). The nonlinear messages (SEGNN-like: the message depends
nonlinearly on both endpoints, conditioned on the geometry in both layers)
are the two convolutions of an :class:`~pyg_implicit.ImplicitPointConv` pair
over the "edge graph" (edge ``e`` -> edge ``e``, source position ``p_j``,
target position ``p_i``). ``p`` starts at the input positions. The position
update (EGNN-style, learnable ``w``, ``c``, zero at initialisation) lets later
layers interact at extrapolated positions, like the steps of an integrator
(``pos_updates=False`` switches it off).

``norm`` is an equivariant layer norm per node (scalars standardised over
channels; each l > 0 block divided by the RMS of its field norms; learnable
per-field scales), equivariant for every subgroup of O(3).

Inputs: node features ``[|v|, v]`` (trivial, standard), with ``q`` in front
when ``node_charge=True``; edge attributes ``[q_src q_dst, |p_src - p_dst|]``
(trivial) plus, optionally, ``v_src, v_dst`` (standard). By default
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
On the charged task (30 epochs, linear messages) dropping ``q_i`` from the
node features lowered the test MSE from 0.00770 to 0.00644.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

GROUPS = ("o3", "so3", "so2z", "o2z", "octa", "fullocta")
AXIAL_GROUPS = ("so2z", "o2z")  # the groups that fix the z axis (the field of charged-field)
MESSAGES = ("linear", "nonlinear")
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


# the simulator clips each force component at 100 = 1 / 0.1^2: below r ~ 0.1 the
# Coulomb terms stop growing
COULOMB_MIN_DISTANCE = 0.1


def _coulomb_terms(qq: torch.Tensor, dist: torch.Tensor, self_loop: torch.Tensor):
    """``q_i q_j / r`` and ``0.1 q_i q_j / r^2`` (r clamped at 0.1, zero on self loops):
    the potential and force magnitude, which a kernel MLP of ``r`` finds hard to fit
    near close encounters, where most of the N-body error is."""
    inv = 1.0 / dist.clamp_min(COULOMB_MIN_DISTANCE)
    inv = inv.masked_fill(self_loop[:, None], 0.0)
    return qq * inv, 0.1 * qq * inv * inv


def _encounter_terms(x: torch.Tensor, w: torch.Tensor, horizon: float):
    """Closest approach of each pair over the horizon under straight-line motion:
    with relative position ``x`` and relative velocity ``w``, ``t_c = clamp(-x.w / |w|^2,
    0, horizon)`` and ``d_c = |x + w t_c|``; returns ``(d_c, t_c / horizon)``. Both are
    invariant under E(3) and Galilean boosts and flag the pairs heading into a close
    encounter, which a kernel MLP of ``x`` and the velocities can express only through
    a division it finds hard to fit."""
    t_c = _encounter_times(x, w, horizon)
    d_c = (x + w * t_c).norm(dim=-1, keepdim=True)
    return d_c, t_c / horizon


def _encounter_times(x: torch.Tensor, w: torch.Tensor, horizon: float) -> torch.Tensor:
    """``t_c = clamp(-x.w / |w|^2, 0, horizon)`` [E, 1], see :func:`_encounter_terms`."""
    ww = w.pow(2).sum(-1, keepdim=True)
    return (-(x * w).sum(-1, keepdim=True) / ww.clamp_min(1e-12)).clamp(0.0, horizon)


def _axis_terms(x: torch.Tensor, w: torch.Tensor, horizon: float,
                axis_range: Optional[float] = None):
    """Features of a pair's geometry that see the coordinate axes, for the force
    clipping of the simulator (which acts per Cartesian component and so is symmetric
    only under O_h, the permutations and sign flips of the axes).

    For each direction ``u`` among the relative position ``x``, the relative velocity
    ``w`` and the straight-line closest approach ``x + w t_c``: the cubic invariant
    ``c(u) = 5/2 (sum_k u_k^4 - 3/5)`` (1 along an axis, -2/3 along a diagonal, mean 0
    over the sphere) and the cubic vector ``5/2 (u**3 - 3/5 u)`` (componentwise cube;
    0 for ``u`` = 0). With ``axis_range`` all of them are multiplied by
    ``exp(-(d_c / axis_range)^2)``, ``d_c`` the closest-approach distance, so that only
    pairs heading into a close encounter (where the clipping acts) see the axes.
    Returns ``(scalars [E, 3], vectors [E, 9])``: invariant, respectively vectors,
    under O_h but not under other rotations."""
    t_c = _encounter_times(x, w, horizon)
    closest = x + w * t_c
    scalars, vectors = [], []
    for v in (x, w, closest):
        n = v.norm(dim=-1, keepdim=True)
        u = v / n.clamp_min(1e-12)
        nonzero = (n > 0).to(v.dtype)
        scalars.append(2.5 * (u.pow(4).sum(-1, keepdim=True) - 0.6) * nonzero)
        vectors.append(2.5 * (u.pow(3) - 0.6 * u))
    scalars, vectors = torch.cat(scalars, dim=1), torch.cat(vectors, dim=1)
    if axis_range is not None:
        gate = torch.exp(-(closest.norm(dim=-1, keepdim=True) / axis_range).pow(2))
        scalars, vectors = scalars * gate, vectors * gate
    return scalars, vectors


def coulomb_force(pos: torch.Tensor, q: torch.Tensor, edge_index: torch.Tensor,
                  scale: float = 0.1) -> torch.Tensor:
    """``scale * sum_j q_i q_j (p_i - p_j) / r^3`` over the incoming edges ``j -> i``
    (r clamped at 0.1, self loops skipped): the Coulomb force on each node."""
    src, dst = edge_index
    q = q.reshape(-1)
    x = pos[dst] - pos[src]
    r = x.norm(dim=-1, keepdim=True).clamp_min(COULOMB_MIN_DISTANCE)
    f = (q[src] * q[dst])[:, None] * x / r.pow(3)
    f = f.masked_fill((src == dst)[:, None], 0.0)
    return scale * pos.new_zeros(pos.shape).index_add_(0, dst, f)


class NBodyModel(torch.nn.Module):
    r"""Implicit steerable-kernel network for N-body position prediction.

    Args:
        group: ``"o3"``, ``"so3"``, ``"so2z"``, ``"o2z"``, ``"octa"`` or ``"fullocta"``
            (see module docstring).
        num_layers: number of hidden convolutions (a final convolution to the
            output vector comes on top).
        scalars, vectors, tensors: multiplicities of the hidden l = 0, l = 1
            (standard) and l = 2 fields.
        hidden_channels, hidden_layers, band_limit: kernel-MLP size, passed to
            :class:`~pyg_implicit.ImplicitPointConv`.
        velocity_attr: also give ``v_src``, ``v_dst`` to the kernels as vector
            edge attributes.
        pair_velocity_attr: with ``velocity_attr``, give only the pair's relative
            velocity ``v_src - v_dst`` (one vector attribute instead of two): each
            kernel is then itself invariant under Galilean boosts.
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
        messages: ``"linear"``: a layer is one convolution, messages linear in
            ``h_j``; ``"nonlinear"``: a two-layer gated message per edge,
            ``K_2(x_ij, a_ij) gate(K_1(x_ij, a_ij) [h_j, h_i])``, summed at ``i``
            (SEGNN-like; both kernels implicit, about 2x the cost per layer).
        relative_velocity: the network sees velocities relative to the mean
            velocity of each node's neighbours (the centre-of-mass velocity on the
            fully connected graph), and the output adds ``T * mean velocity`` with a
            learnable ``T`` (initially 1): the model is then covariant under Galilean
            boosts ``v -> v + u``, which move the targets by ``T u`` exactly.
        coulomb_attr: two more scalar edge attributes, ``q_i q_j / r`` and
            ``0.1 q_i q_j / r^2`` (``r`` clamped at 0.1, the simulator's force-clipping
            scale; zero on self loops), recomputed at the updated positions. Off by
            default: on ``charged`` it made no measurable difference over 19 epochs.
        encounter_attr: two more scalar edge attributes, the distance and the time
            (over ``horizon``) of each pair's closest approach within the horizon if
            both moved in straight lines (see :func:`_encounter_terms`), recomputed at
            the updated positions. Off by default: on ``charged`` it fitted faster but
            overfitted more (validation 0.00424 against 0.00406 at epoch 26).
        axis_attr: three more scalar and three more vector edge attributes that see
            the coordinate axes (see :func:`_axis_terms`), recomputed at the updated
            positions. They break the model's symmetry group down to its intersection
            with O_h, the exact symmetry of the force-clipping simulator, while its
            kernels keep the constraint of ``group``. On ``charged`` they made the
            model overfit (validation 0.00666 against 0.00451 at epoch 15).
        axis_range: with ``axis_attr``, fade the axis attributes out with the pair's
            closest-approach distance ``d_c`` as ``exp(-(d_c / axis_range)^2)``
            (``None``: no fading).
        horizon: prediction horizon in time units (the dataset's, 1.0), for
            ``encounter_attr`` and ``axis_attr``.
        node_force: give the Coulomb force on each node (times 0.1, see
            :func:`coulomb_force`) to the first layer as a vector feature, with its norm.
        dropout: field dropout on each layer's update ``dh`` in training: every field
            (a scalar, a whole vector, a whole l = 2 field) of every node is zeroed with
            this probability and the kept ones scaled by ``1 / (1 - dropout)``. One
            mask entry per field, so a dropped-out model is still equivariant for each
            mask; the identity in ``eval()``.
        conv_kwargs: further keyword arguments of the convolution (e.g. ``backend``).

    Shapes:
        ``forward(pos [N, 3], vel [N, 3], charges [N] or [N, 1], edge_index [2, E])
        -> [N, 3]`` predicted positions.
    """

    def __init__(self, group: str = "o3", num_layers: int = 4, scalars: int = 16,
                 vectors: int = 8, tensors: int = 0, hidden_channels: int = 16,
                 hidden_layers: int = 2, band_limit: int = 2, velocity_attr: bool = True,
                 width: float = 2.0, num_neighbors: float = 5.0, pos_updates: bool = True,
                 node_charge: bool = False, messages: str = "nonlinear",
                 relative_velocity: bool = True, coulomb_attr: bool = False,
                 node_force: bool = False, dropout: float = 0.0,
                 encounter_attr: bool = False, horizon: float = 1.0,
                 pair_velocity_attr: bool = False, axis_attr: bool = False,
                 axis_range: Optional[float] = None,
                 conv_kwargs: Optional[Dict] = None):
        super().__init__()
        from escnn import gspaces

        from pyg_implicit.nn import ImplicitPointConv

        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if messages not in MESSAGES:
            raise ValueError(f"messages must be one of {MESSAGES}, got {messages!r}")
        if not horizon > 0.0:
            raise ValueError(f"horizon must be positive, got {horizon}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.group = group
        self.dropout = float(dropout)
        self.config = dict(group=group, num_layers=num_layers, scalars=scalars, vectors=vectors,
                           tensors=tensors, hidden_channels=hidden_channels,
                           hidden_layers=hidden_layers, band_limit=band_limit,
                           velocity_attr=velocity_attr, width=width,
                           num_neighbors=num_neighbors, pos_updates=pos_updates,
                           node_charge=node_charge, messages=messages,
                           relative_velocity=relative_velocity, coulomb_attr=coulomb_attr,
                           node_force=node_force, dropout=float(dropout),
                           encounter_attr=encounter_attr, horizon=float(horizon),
                           pair_velocity_attr=pair_velocity_attr, axis_attr=axis_attr,
                           axis_range=axis_range, conv_kwargs=dict(conv_kwargs or {}))
        o3 = gspaces.flipRot3dOnR3()
        G = o3.fibergroup
        triv, vec, l2 = G.irrep(0, 0), G.standard_representation(), G.irrep(0, 2)
        self.scalars, self.vectors, self.tensors = scalars, vectors, tensors
        ngates = vectors + tensors

        lmax = 2 if tensors else 1
        _instantiate_irreps(make_gspace(group).fibergroup, 2 * lmax + max(band_limit, 1) + 2)

        def ftype(*reps):
            return _restrict(o3.type(*reps), group)

        self.node_charge, self.messages = node_charge, messages
        self.coulomb_attr, self.node_force = coulomb_attr, node_force
        self.encounter_attr, self.horizon = encounter_attr, float(horizon)
        self.pair_velocity_attr, self.axis_attr = pair_velocity_attr, axis_attr
        if axis_range is not None and not axis_range > 0.0:
            raise ValueError(f"axis_range must be positive or None, got {axis_range}")
        self.axis_range = axis_range
        self.in_type = ftype(*([triv] if node_charge else []), triv, vec,
                             *([triv, vec] if node_force else []))
        self.hidden_type = ftype(*([triv] * scalars + [vec] * vectors + [l2] * tensors))
        self.gated_type = ftype(*([triv] * (scalars + ngates) + [vec] * vectors
                                  + [l2] * tensors))
        self.out_type = ftype(vec)
        self.velocity_attr = velocity_attr
        self.edge_attr_type = self._attr_type(o3, group, velocity_attr, coulomb_attr,
                                              encounter_attr, pair_velocity_attr, axis_attr)
        self.gspace = self.in_type.gspace

        kw = dict(hidden_channels=hidden_channels, hidden_layers=hidden_layers)
        kw.update(conv_kwargs or {})
        params = inspect.signature(ImplicitPointConv.__init__).parameters
        accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for name, value in (("band_limit", band_limit), ("width", width),
                            ("num_neighbors", num_neighbors)):
            if name in params or accepts_kwargs:
                kw.setdefault(name, value)

        self.convs = torch.nn.ModuleList()
        # nonlinear messages: per edge, gate(K1(x_ij, a_ij) [h_j, h_i]) then K2(x_ij, a_ij),
        # both convolutions over the "edge graph" (edge e -> edge e), summed at i
        self.message_convs = torch.nn.ModuleList()
        t_in = self.in_type
        for _ in range(num_layers):
            if messages == "linear":
                self.convs.append(ImplicitPointConv(t_in, self.gated_type, self.edge_attr_type,
                                                    **kw))
            else:
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
        # pre-norms of the hidden convolutions 2..L and of the output convolution
        nf = scalars + vectors + tensors
        self.norm_weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.ones(nf)) for _ in range(num_layers)])
        self.norm_biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(scalars)) for _ in range(num_layers)])
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

    @staticmethod
    def _attr_type(o3, group: str, velocity_attr: bool, coulomb_attr: bool = False,
                   encounter_attr: bool = False, pair_velocity_attr: bool = False,
                   axis_attr: bool = False):
        G = o3.fibergroup
        reps = [G.irrep(0, 0)] * (2 + 2 * coulomb_attr + 2 * encounter_attr + 3 * axis_attr)
        if velocity_attr:
            reps += [G.standard_representation()] * (1 if pair_velocity_attr else 2)
        # the axis vectors transform like vectors under O_h only (see _axis_terms)
        reps += [G.standard_representation()] * (3 * axis_attr)
        return _restrict(o3.type(*reps), group)

    # ------------------------------------------------------------------ helpers
    def _norm(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """Equivariant layer norm per node: scalars standardised over channels, each
        l > 0 block divided by its RMS field norm; learnable per-field scales."""
        N, s, nv, nt = h.shape[0], self.scalars, self.vectors, self.tensors
        w = self.norm_weights[i]
        parts = []
        sc = h[:, :s]
        sc = (sc - sc.mean(1, keepdim=True)) / (sc.var(1, unbiased=False, keepdim=True)
                                                + 1e-5).sqrt()
        parts.append(sc * w[:s] + self.norm_biases[i])
        off = s
        for k, d, w_k in ((nv, 3, w[s:s + nv]), (nt, 5, w[s + nv:])):
            if k:
                f = h[:, off:off + d * k].reshape(N, k, d)
                rms = (f.pow(2).sum(-1).mean(1, keepdim=True) + 1e-5).sqrt()
                parts.append((f / rms[:, :, None] * w_k[None, :, None]).reshape(N, d * k))
            off += d * k
        return torch.cat(parts, dim=1)

    def _gate(self, y: torch.Tensor) -> torch.Tensor:
        """[s, g_v, g_t, v, t] -> [silu(s), sigmoid(g_v) v, sigmoid(g_t) t]."""
        N, s, nv, nt = y.shape[0], self.scalars, self.vectors, self.tensors
        gates = torch.sigmoid(y[:, s:s + nv + nt])
        off = s + nv + nt
        parts = [F.silu(y[:, :s])]
        if nv:
            v = y[:, off:off + 3 * nv].reshape(N, nv, 3) * gates[:, :nv, None]
            parts.append(v.reshape(N, 3 * nv))
        off += 3 * nv
        if nt:
            t = y[:, off:off + 5 * nt].reshape(N, nt, 5) * gates[:, nv:, None]
            parts.append(t.reshape(N, 5 * nt))
        return torch.cat(parts, dim=1)

    def _field_dropout(self, dh: torch.Tensor) -> torch.Tensor:
        """Zero whole fields of ``dh`` ([scalars, vectors, l = 2], as ``_gate`` lays them
        out) with probability ``dropout``, in training only."""
        if not self.training or self.dropout == 0.0:
            return dh
        s, nv, nt = self.scalars, self.vectors, self.tensors
        keep = torch.rand(dh.shape[0], s + nv + nt, device=dh.device) >= self.dropout
        keep = keep.to(dh.dtype) / (1.0 - self.dropout)
        dims = torch.tensor([1] * s + [3] * nv + [5] * nt, device=dh.device)
        return dh * keep.repeat_interleave(dims, dim=1)

    def edge_attributes(self, pos, vel, charges, edge_index) -> torch.Tensor:
        src, dst = edge_index
        q = charges.reshape(-1)
        dist = (pos[src] - pos[dst]).norm(dim=-1, keepdim=True)
        qq = (q[src] * q[dst])[:, None]
        attrs = [qq, dist]
        if self.coulomb_attr:
            attrs += list(_coulomb_terms(qq, dist, src == dst))
        if self.encounter_attr:
            attrs += list(_encounter_terms(pos[src] - pos[dst], vel[src] - vel[dst],
                                           self.horizon))
        if self.axis_attr:
            axis_scalars, axis_vectors = _axis_terms(pos[src] - pos[dst], vel[src] - vel[dst],
                                                     self.horizon, self.axis_range)
            attrs.append(axis_scalars)
        if self.velocity_attr:
            attrs += [vel[src] - vel[dst]] if self.pair_velocity_attr else [vel[src], vel[dst]]
        if self.axis_attr:
            attrs.append(axis_vectors)
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
        if self.messages == "linear":
            return self.convs[i](hn, p, edge_index, a)
        src, dst = edge_index
        self_edges = self._edge_graph(src.numel(), src.device)
        pos_pair = (p[src], p[dst])
        m = self._gate(self.convs[i](torch.cat([hn[src], hn[dst]], dim=1), pos_pair,
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
        if self.node_force:
            force = coulomb_force(pos, q, edge_index)
            x = torch.cat([x, force.norm(dim=-1, keepdim=True), force], dim=1)
        a = self.edge_attributes(pos, vel, q, edge_index)
        p = pos
        h = None
        for i in range(len(self.convs)):
            hn = x if i == 0 else self._norm(h, i - 1)
            dh = self._field_dropout(self._gate(self._layer(i, hn, p, edge_index, a)))
            h = dh if i == 0 else h + dh
            if self.pos_updates:
                p = p + self._position_update(dh, vel, i)
                a = self.edge_attributes(p, vel, q, edge_index)
        L = len(self.convs)
        hn = self._norm(h, L - 1)
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
