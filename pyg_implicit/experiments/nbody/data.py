r"""Charged N-body system in 3D: simulator, dataset files and a PyG dataset.

The simulator reproduces the protocol of the EGNN N-body experiment
(Satorras, Hoogeboom, Welling, "E(n) Equivariant Graph Neural Networks",
ICML 2021, ``n_body_system/dataset/synthetic_sim.py`` and
``generate_dataset.py`` of their code), which itself extends the charged
particles simulator of Kipf et al., "Neural Relational Inference" (ICML 2018)
to 3D. SEGNN (Brandstetter et al., ICLR 2022) and the implicit-kernel paper
(Zhdanov et al., NeurIPS 2023, arXiv 2212.06096) use the same data. It is
re-implemented here, vectorised with numpy across simulations.

Protocol (every parameter, with the published value as default)
----------------------------------------------------------------
``n_particles = 5``
    particles per system.
``charge_types = (-1, 0, +1)`` with probabilities ``(1/2, 0, 1/2)``
    each particle's charge is drawn i.i.d.; in practice +-1 only.
``loc_std = 1.0``
    initial positions ~ N(0, loc_std^2) per coordinate (the reference scales it
    by ``(n/5)^(1/3)``, i.e. 1 for 5 particles; we apply the same scaling).
``vel_norm = 0.5``
    initial velocities: a uniformly random direction (normalised Gaussian)
    with norm exactly ``vel_norm`` for every particle.
``box_size = 5.0``
    initial positions outside ``[-box, box]^3`` are reflected at the wall
    (velocity component flipped). This is applied to the initial state
    only: the reference code has the wall clamp during the simulation
    commented out, and so do we (particles move freely).
``interaction_strength = 1.0``
    Coulomb constant. Force on particle i:
    ``F_i = k * sum_{j != i} q_i q_j (x_i - x_j) / |x_i - x_j|^3``
    (like charges repel), potential ``U = k * sum_{i<j} q_i q_j / |x_i - x_j|``,
    unit masses.
``max_force = 0.1 / dt = 100``
    each Cartesian component of the total force on a particle is clipped to
    ``[-max_force, max_force]`` (the NRI/EGNN "clamping"). Clipping only acts
    in close encounters (pair distance below ~0.1); when it acts, momentum and
    energy are no longer conserved. The number of clipped steps per simulation
    is saved as ``clip_steps``.
``dt = 0.001``
    time step.
Integrator
    the reference's "leapfrog": ``v += dt F(x_0)`` once, then for
    ``i = 1 .. T-1``: ``x += dt v``; (record if ``i % sample_freq == 0``);
    ``v += dt F(x)``. This is symplectic (semi-implicit) Euler, i.e. leapfrog
    in kick-drift form; the recorded velocity is the one of the drift that
    reached the recorded position (half a step behind it, ``v(t - dt/2)``).
    No observation noise (``noise_var = 0``).
Time reversal
    leapfrog is exactly reversible, with or without clipping and field (the
    force depends on positions only): from the frame ``(x_T, -(v_T + dt F(x_T)))``
    the same integrator retraces the trajectory to ``x_0`` (:func:`reverse_in_time`;
    negating ``v_T`` alone misses by half a kick). ``load_split(...,
    time_reversed=True)`` gives each window run backwards, built from the two
    frames of the window only; training can use it (``--time-reversal``, an extension
    of the protocol: the reversed sample needs the target frame's velocity).
``length = 5000``, ``sample_freq = 100``
    5000 steps per simulation, recorded every 100 steps: frames ``k = 0..48``
    hold the state after step ``100 (k + 1)`` (``length / sample_freq - 1``
    frames; the initial state is overwritten in the reference too).
Task (EGNN "nbody_small", also SEGNN and the implicit-kernel paper)
    input: positions, velocities and charges at frame 30 (step 3100); target:
    positions at frame 40 (step 4100), i.e. 1000 steps = 1.0 time units later.
    Loss / metric: mean squared error over particles and coordinates.
Split sizes
    EGNN generates 10000 training simulations (seed 43) and trains on the
    first 3000, with 2000 validation and 2000 test simulations. We generate
    3000 / 2000 / 2000 by default.

Variant ``charged-field``
    adds a constant external electric field along z: ``F_i += q_i E_z e_z``
    with ``E_z = 1.0`` (the value of the implicit-kernel paper's simulator,
    ``e_z=1``), before the clipping. The system is then only symmetric under
    rotations about z and reflections in planes containing z (group
    ``O(2)`` about z acting on R^3 as the "conical" subgroup of O(3));
    the x and y components of the total momentum stay conserved, the z
    component grows as ``E_z * sum_i q_i * t``.

Randomness and files
--------------------
``protocol="egnn"`` (the default) gives EGNN's own systems: its
``generate_dataset.py --num-train 10000 --seed 43`` draws every simulation's initial
state from one legacy ``np.random.seed(43)`` stream, train (10000), then val (2000),
then test (2000), each simulation calling ``choice`` (5 charges), ``randn(3, 5)``
(positions), ``randn(3, 5)`` (velocity directions) and, after simulating, twice
``randn(49, 3, 5)`` (observation noise of variance 0, drawn all the same). Those calls
are replayed here (:func:`egnn_initial_conditions`), and the first 3000 training
systems are kept, as EGNN's loader does: the published numbers are on exactly these
systems. ``protocol="independent"`` draws each split from its own child of
``numpy.random.SeedSequence(seed)`` (the data of the results recorded before the
exact split existed; same distribution, other systems). The simulation itself is
deterministic and per-simulation (the batch size for vectorisation does not change
the numbers). One
``.npz`` per split, ``{train,val,test}.npz`` under ``--out``, float32:
``loc [S, F, n, 3]``, ``vel [S, F, n, 3]``, ``charges [S, n]``,
``clip_steps [S]`` (int32) and the scalar metadata (``variant``, ``seed``,
``dt``, ``sample_freq``, ``field`` ...). ``meta.json`` repeats the metadata.

Command line::

    python -m pyg_implicit.experiments.nbody.data generate --out data/nbody \
        [--protocol egnn|independent] [--variant charged|charged-field] \
        [--num-train 3000 --num-val 2000 --num-test 2000] [--seed 43] \
        [--length 5000] [--sample-freq 100]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import numpy as np

VARIANTS = ("charged", "charged-field")
SPLITS = ("train", "val", "test")
PROTOCOLS = ("egnn", "independent")
EGNN_TRAIN_STREAM = 10000  # training simulations EGNN's generator draws (it uses 3000)


@dataclass
class SimConfig:
    """Parameters of the charged-particle simulator (see module docstring)."""

    n_particles: int = 5
    box_size: float = 5.0
    loc_std: float = 1.0
    vel_norm: float = 0.5
    interaction_strength: float = 1.0
    dt: float = 0.001
    max_force: float = 100.0  # 0.1 / dt
    length: int = 5000
    sample_freq: int = 100
    field: float = 0.0  # external field E_z along +z ("charged-field": 1.0)
    charge_probs: Sequence[float] = (0.5, 0.0, 0.5)  # for charges (-1, 0, +1)

    @classmethod
    def for_variant(cls, variant: str, **kwargs) -> "SimConfig":
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if variant == "charged-field":
            kwargs.setdefault("field", 1.0)
        return cls(**kwargs)

    @property
    def num_frames(self) -> int:
        return self.length // self.sample_freq - 1


def sample_initial_conditions(cfg: SimConfig, num_sims: int, rng: np.random.Generator):
    """Draw charges [S, n], positions [S, n, 3], velocities [S, n, 3] (float64)."""
    n = cfg.n_particles
    charges = rng.choice(np.array([-1.0, 0.0, 1.0]), size=(num_sims, n), p=list(cfg.charge_probs))
    loc_std = cfg.loc_std * (n / 5.0) ** (1.0 / 3.0)
    loc = rng.standard_normal((num_sims, n, 3)) * loc_std
    vel = rng.standard_normal((num_sims, n, 3))
    vel = vel * (cfg.vel_norm / np.linalg.norm(vel, axis=-1, keepdims=True))
    _reflect_at_walls(cfg, loc, vel)  # initial state only, as in the reference
    return charges, loc, vel


def _reflect_at_walls(cfg: SimConfig, loc: np.ndarray, vel: np.ndarray) -> None:
    over = loc > cfg.box_size
    loc[over] = 2 * cfg.box_size - loc[over]
    vel[over] = -np.abs(vel[over])
    under = loc < -cfg.box_size
    loc[under] = -2 * cfg.box_size - loc[under]
    vel[under] = np.abs(vel[under])


def egnn_initial_conditions(cfg: SimConfig, counts: Sequence[int], seed: int = 43,
                            train_stream: int = EGNN_TRAIN_STREAM):
    """EGNN's initial states: the legacy ``RandomState(seed)`` stream consumed in the
    order of its generator (module docstring), ``train_stream`` training simulations
    drawn and the first ``counts[0]`` kept, then ``counts[1]`` validation and
    ``counts[2]`` test simulations. Returns one ``(charges [S, n], loc [S, n, 3],
    vel [S, n, 3])`` per split."""
    n, rs = cfg.n_particles, np.random.RandomState(seed)
    loc_std = cfg.loc_std * (n / 5.0) ** (1.0 / 3.0)
    if counts[0] > train_stream:
        raise ValueError(f"EGNN's stream has {train_stream} training simulations, "
                         f"{counts[0]} asked for")
    splits = []
    for drawn, kept in ((train_stream, counts[0]), (counts[1],) * 2, (counts[2],) * 2):
        q, loc, vel = np.zeros((kept, n)), np.zeros((kept, n, 3)), np.zeros((kept, n, 3))
        for s in range(drawn):
            charges = rs.choice(np.array([-1.0, 0.0, 1.0]), size=(n, 1), p=list(cfg.charge_probs))
            x = rs.randn(3, n) * loc_std
            v = rs.randn(3, n)
            v = v * cfg.vel_norm / np.sqrt((v ** 2).sum(axis=0)).reshape(1, -1)
            rs.randn(cfg.num_frames, 3, n), rs.randn(cfg.num_frames, 3, n)  # noise of var 0
            if s < kept:
                q[s], loc[s], vel[s] = charges[:, 0], x.T, v.T
        _reflect_at_walls(cfg, loc, vel)
        splits.append((q, loc, vel))
    return splits


def forces(cfg: SimConfig, loc: np.ndarray, charges: np.ndarray, clip: bool = True):
    """Total force [S, n, 3] on each particle (Coulomb + field), and a clip mask [S].

    ``loc`` [S, n, 3], ``charges`` [S, n].
    """
    diff = loc[:, :, None, :] - loc[:, None, :, :]  # x_i - x_j  [S, n, n, 3]
    r2 = np.einsum("sijc,sijc->sij", diff, diff)
    n = loc.shape[1]
    idx = np.arange(n)
    r2[:, idx, idx] = np.inf  # no self-force
    qq = charges[:, :, None] * charges[:, None, :]
    size = cfg.interaction_strength * qq / (r2 * np.sqrt(r2))
    F = np.einsum("sij,sijc->sic", size, diff)
    if cfg.field != 0.0:
        F[:, :, 2] += cfg.field * charges
    if not clip:
        return F, np.zeros(loc.shape[0], dtype=bool)
    clipped = (np.abs(F) > cfg.max_force).any(axis=(1, 2))
    np.clip(F, -cfg.max_force, cfg.max_force, out=F)
    return F, clipped


def energy(cfg: SimConfig, loc: np.ndarray, vel: np.ndarray, charges: np.ndarray) -> np.ndarray:
    """Total energy (kinetic + Coulomb + field potential) per system.

    ``loc``, ``vel`` [..., n, 3]; ``charges`` [S, n] broadcast against ``loc``
    (e.g. [S, F, n, 3] with [S, n] gives energies [S, F]).
    """
    if charges.ndim < loc.ndim - 1:
        charges = charges.reshape(charges.shape[:1] + (1,) * (loc.ndim - 1 - charges.ndim)
                                  + charges.shape[1:])
    kin = 0.5 * (vel ** 2).sum(axis=(-1, -2))
    diff = loc[..., :, None, :] - loc[..., None, :, :]
    r = np.sqrt((diff ** 2).sum(-1))
    n = loc.shape[-2]
    iu = np.triu_indices(n, 1)
    qq = charges[..., :, None] * charges[..., None, :]
    pot = cfg.interaction_strength * (qq[..., iu[0], iu[1]] / r[..., iu[0], iu[1]]).sum(-1)
    pot_field = -cfg.field * (charges * loc[..., 2]).sum(-1)
    return kin + pot + pot_field


def simulate(cfg: SimConfig, charges: np.ndarray, loc0: np.ndarray, vel0: np.ndarray,
             progress=None):
    """Run ``len(charges)`` simulations at once (float64).

    Returns ``loc, vel`` of shape [S, F, n, 3] (F = ``cfg.num_frames``) and
    ``clip_steps`` [S] (number of steps in which the force was clipped).
    ``progress`` is an optional callable taking a number of steps done.
    """
    if cfg.length % cfg.sample_freq != 0:
        raise ValueError("length must be a multiple of sample_freq")
    S, n = charges.shape
    nf = cfg.num_frames
    loc_out = np.zeros((S, nf, n, 3))
    vel_out = np.zeros((S, nf, n, 3))
    clip_steps = np.zeros(S, dtype=np.int64)
    loc = loc0.astype(np.float64, copy=True)
    vel = vel0.astype(np.float64, copy=True)
    F, c = forces(cfg, loc, charges)
    clip_steps += c
    vel += cfg.dt * F
    counter = 0
    report = max(1, cfg.sample_freq)
    for i in range(1, cfg.length):
        loc += cfg.dt * vel
        if i % cfg.sample_freq == 0:
            loc_out[:, counter] = loc
            vel_out[:, counter] = vel
            counter += 1
        F, c = forces(cfg, loc, charges)
        clip_steps += c
        vel += cfg.dt * F
        if progress is not None and i % report == 0:
            progress(report)
    return loc_out, vel_out, clip_steps


def generate_split(cfg: SimConfig, initial, chunk_size: int = 1000,
                   progress=None) -> Dict[str, np.ndarray]:
    """Simulate one split from its initial states ``(charges, loc0, vel0)``
    (the result does not depend on ``chunk_size``)."""
    charges, loc0, vel0 = initial
    num_sims = len(charges)
    locs, vels, clips = [], [], []
    for s in range(0, num_sims, chunk_size):
        sl = slice(s, min(num_sims, s + chunk_size))
        loc, vel, clip = simulate(cfg, charges[sl], loc0[sl], vel0[sl], progress=progress)
        locs.append(loc.astype(np.float32))
        vels.append(vel.astype(np.float32))
        clips.append(clip.astype(np.int32))
    nf, n = cfg.num_frames, cfg.n_particles
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape, np.float32)  # noqa: E731
    return {
        "loc": cat(locs, (0, nf, n, 3)),
        "vel": cat(vels, (0, nf, n, 3)),
        "charges": charges.astype(np.float32),
        "clip_steps": np.concatenate(clips) if clips else np.zeros(0, np.int32),
    }


def generate(out: str, variant: str = "charged", num_train: int = 3000, num_val: int = 2000,
             num_test: int = 2000, seed: int = 43, length: int = 5000, sample_freq: int = 100,
             chunk_size: int = 1000, show_progress: bool = True, protocol: str = "egnn",
             egnn_train_stream: int = EGNN_TRAIN_STREAM) -> Dict[str, str]:
    """Generate ``{train,val,test}.npz`` and ``meta.json`` under ``out``; return the paths.
    ``protocol``: ``"egnn"`` (EGNN's systems) or ``"independent"`` (module docstring)."""
    from tqdm.auto import tqdm

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    cfg = SimConfig.for_variant(variant, length=length, sample_freq=sample_freq)
    os.makedirs(out, exist_ok=True)
    counts = {"train": num_train, "val": num_val, "test": num_test}
    if protocol == "egnn":
        initial = egnn_initial_conditions(cfg, list(counts.values()), seed, egnn_train_stream)
    else:
        initial = [sample_initial_conditions(cfg, counts[split], np.random.default_rng(child))
                   for split, child in zip(SPLITS, np.random.SeedSequence(seed).spawn(3))]
    total = sum(((c + chunk_size - 1) // chunk_size) * ((cfg.length - 1) // cfg.sample_freq)
                * cfg.sample_freq for c in counts.values())
    meta = {"variant": variant, "protocol": protocol, "seed": seed,
            **{f"num_{k}": v for k, v in counts.items()}, **asdict(cfg)}
    if protocol == "egnn":
        meta["egnn_train_stream"] = egnn_train_stream
    meta["charge_probs"] = list(cfg.charge_probs)
    paths = {}
    with tqdm(total=total, desc=f"simulating {variant}", unit="step", unit_scale=True,
              disable=not show_progress, file=sys.stderr) as bar:
        for split, init in zip(SPLITS, initial):
            bar.set_postfix(split=split)
            arrays = generate_split(cfg, init, chunk_size, progress=bar.update)
            path = os.path.join(out, f"{split}.npz")
            np.savez_compressed(path, **arrays, variant=np.array(variant), seed=np.array(seed),
                                protocol=np.array(protocol),
                                dt=np.array(cfg.dt), sample_freq=np.array(cfg.sample_freq),
                                field=np.array(cfg.field))
            paths[split] = path
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return paths


# --------------------------------------------------------------------------- dataset

def _fully_connected(n: int):
    import torch

    idx = torch.arange(n)
    src = idx.repeat_interleave(n)
    dst = idx.repeat(n)
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


def reverse_in_time(cfg: SimConfig, loc_T: np.ndarray, vel_T: np.ndarray,
                    charges: np.ndarray) -> np.ndarray:
    """The recorded velocity that runs a simulation backwards from the frame ``(loc_T, vel_T)``.

    The integrator is leapfrog (kick ``v += dt F(x)``, drift ``x += dt v``) and the recorded
    velocity is the one *before* the kick at the recorded position, so the reversed state
    is ``-(vel_T + dt F(loc_T))``: simulating from ``(loc_T, that)`` retraces the frames
    back to the start, exactly up to rounding (the force is a function of the positions
    only, clipped or not, with or without the field). Negating ``vel_T`` alone is off by
    half a kick and drifts away in close encounters.
    """
    F, _ = forces(cfg, np.asarray(loc_T, dtype=np.float64), np.asarray(charges, dtype=np.float64))
    return -(np.asarray(vel_T, dtype=np.float64) + cfg.dt * F)


def load_split(root: str, split: str, frame_0: int = 30, frame_T: int = 40,
               max_samples: Optional[int] = None,
               time_reversed: bool = False) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """Load one split as dense tensors: ``pos, vel, target`` [S, n, 3], ``charges`` [S, n];
    also ``variant`` and ``horizon`` (the time from frame 0 to frame T).

    ``time_reversed``: the same windows run backwards, input frame T (positions and the
    reversed velocity of :func:`reverse_in_time`) and target the positions at frame 0,
    an exact sample of the same map since the dynamics are time-reversible.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = os.path.join(root, f"{split}.npz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; generate it with "
                                f"`python -m pyg_implicit.experiments.nbody.data generate --out {root}`")
    with np.load(path) as z:
        loc, vel, charges = z["loc"], z["vel"], z["charges"]
        variant = str(z["variant"])
        cfg = SimConfig.for_variant(variant, dt=float(z["dt"]), sample_freq=int(z["sample_freq"]),
                                    field=float(z["field"]))
        frame_time = cfg.dt * cfg.sample_freq
    nf = loc.shape[1]
    if not (0 <= frame_0 < nf and 0 <= frame_T < nf):
        raise ValueError(f"frames must lie in [0, {nf}), got frame_0={frame_0}, frame_T={frame_T}")
    if max_samples is not None:
        loc, vel, charges = loc[:max_samples], vel[:max_samples], charges[:max_samples]
    start, end = loc[:, frame_0], loc[:, frame_T]
    vel_start = vel[:, frame_0]
    if time_reversed:
        start, end = end, start
        vel_start = reverse_in_time(cfg, start, vel[:, frame_T], charges).astype(vel.dtype)
    return {
        "pos": torch.from_numpy(np.ascontiguousarray(start)),
        "vel": torch.from_numpy(np.ascontiguousarray(vel_start)),
        "target": torch.from_numpy(np.ascontiguousarray(end)),
        "charges": torch.from_numpy(np.ascontiguousarray(charges)),
        "variant": variant,
        "horizon": frame_time * (frame_T - frame_0),
    }


def data_protocol(root: str) -> str:
    """How the files under ``root`` were drawn: ``"egnn"`` or ``"independent"`` (files
    written before the exact split existed say nothing and are independent)."""
    try:
        with open(os.path.join(root, "meta.json")) as f:
            return json.load(f).get("protocol", "independent")
    except FileNotFoundError:
        return "independent"


try:  # the dataset class needs torch_geometric; the simulator does not
    from torch_geometric.data import Data, InMemoryDataset
except Exception:  # pragma: no cover
    Data = InMemoryDataset = None


if InMemoryDataset is not None:

    class NBodyDataset(InMemoryDataset):
        r"""Charged N-body graphs from files written by :func:`generate`.

        Each item is a fully connected graph (no self loops) of ``n`` particles:
        ``pos`` [n, 3] and ``vel`` [n, 3] at ``frame_0``, ``charges`` [n, 1],
        ``y`` [n, 3] the positions at ``frame_T`` (defaults: frames 30 -> 40, a
        1000-step horizon, as in EGNN), ``edge_index`` [2, n (n - 1)]
        (``edge_index[0]`` source, ``edge_index[1]`` target) and
        ``edge_attr`` [E, 1] the charge products ``q_src * q_dst``.

        The same data is available as dense tensors through :attr:`tensors`
        (``pos, vel, target`` [S, n, 3], ``charges`` [S, n]), which the
        training loop batches without per-graph Python objects.

        Args:
            root: directory holding ``{train,val,test}.npz``.
            split: ``"train"``, ``"val"`` or ``"test"``.
            frame_0, frame_T: input and target frames.
            max_samples: keep only the first simulations (EGNN trains on 3000).
        """

        def __init__(self, root: str, split: str = "train", frame_0: int = 30, frame_T: int = 40,
                     max_samples: Optional[int] = None, transform=None):
            self.split = split
            self.tensors = load_split(root, split, frame_0, frame_T, max_samples)
            self.variant = self.tensors.pop("variant")
            self.horizon = self.tensors.pop("horizon")
            super().__init__(None, transform)
            self._nbody_root = root
            t = self.tensors
            S, n = t["charges"].shape
            ei = _fully_connected(n)
            data_list = []
            for s in range(S):
                q = t["charges"][s]
                data_list.append(Data(pos=t["pos"][s], vel=t["vel"][s], charges=q[:, None],
                                      y=t["target"][s], edge_index=ei,
                                      edge_attr=(q[ei[0]] * q[ei[1]])[:, None]))
            self._data, self.slices = self.collate(data_list) if data_list else (Data(), None)

        @property
        def num_particles(self) -> int:
            return int(self.tensors["charges"].shape[1])

        def __repr__(self) -> str:
            return (f"{self.__class__.__name__}({len(self)}, split={self.split!r}, "
                    f"variant={self.variant!r})")


# --------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyg_implicit.experiments.nbody.data",
                                description="Charged N-body data (EGNN protocol).")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="simulate and write {train,val,test}.npz")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--variant", default="charged", choices=VARIANTS)
    g.add_argument("--protocol", default="egnn", choices=PROTOCOLS,
                   help="egnn: EGNN's own systems (its seed-43 stream replayed; the published "
                        "numbers are on them); independent: one SeedSequence child per split "
                        "(the data of results recorded before)")
    g.add_argument("--num-train", type=int, default=3000)
    g.add_argument("--num-val", type=int, default=2000)
    g.add_argument("--num-test", type=int, default=2000)
    g.add_argument("--seed", type=int, default=43)
    g.add_argument("--length", type=int, default=5000, help="simulation steps")
    g.add_argument("--sample-freq", type=int, default=100, help="record every k steps")
    g.add_argument("--chunk-size", type=int, default=1000,
                   help="simulations vectorised together (does not change the data)")
    g.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "generate":
        for k in ("num_train", "num_val", "num_test"):
            if getattr(args, k) < 0:
                p.error(f"--{k.replace('_', '-')} must be >= 0")
        paths = generate(args.out, args.variant, args.num_train, args.num_val, args.num_test,
                         args.seed, args.length, args.sample_freq, args.chunk_size,
                         show_progress=not args.no_progress, protocol=args.protocol)
        for split, path in paths.items():
            print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
