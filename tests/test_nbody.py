"""N-body: simulator, dataset, model equivariance, training CLI, checkpoints."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyg_implicit.experiments.nbody import data as nb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- simulator

def _loop_reference(cfg, charges, loc0, vel0):
    """Particle-by-particle version of the protocol (one simulation, float64)."""
    n = len(charges)
    loc, vel = loc0.copy(), vel0.copy()

    def force(x):
        F = np.zeros((n, 3))
        for i in range(n):
            for j in range(n):
                if i != j:
                    d = x[i] - x[j]
                    F[i] += cfg.interaction_strength * charges[i] * charges[j] * d / np.linalg.norm(d) ** 3
            F[i, 2] += cfg.field * charges[i]
        return np.clip(F, -cfg.max_force, cfg.max_force)

    vel += cfg.dt * force(loc)
    frames_x, frames_v = [], []
    for i in range(1, cfg.length):
        loc += cfg.dt * vel
        if i % cfg.sample_freq == 0:
            frames_x.append(loc.copy())
            frames_v.append(vel.copy())
        vel += cfg.dt * force(loc)
    return np.stack(frames_x), np.stack(frames_v)


@pytest.mark.parametrize("field", [0.0, 1.0])
def test_simulator_matches_loop_reference(field):
    cfg = nb.SimConfig(length=300, sample_freq=50, field=field)
    rng = np.random.default_rng(0)
    q, x0, v0 = nb.sample_initial_conditions(cfg, 3, rng)
    loc, vel, _ = nb.simulate(cfg, q, x0, v0)
    assert loc.shape == (3, cfg.num_frames, 5, 3) == (3, 5, 5, 3)
    for s in range(3):
        rx, rv = _loop_reference(cfg, q[s], x0[s], v0[s])
        np.testing.assert_allclose(loc[s], rx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(vel[s], rv, rtol=1e-12, atol=1e-12)


def test_initial_conditions_protocol():
    cfg = nb.SimConfig()
    q, x, v = nb.sample_initial_conditions(cfg, 4000, np.random.default_rng(1))
    assert set(np.unique(q)) == {-1.0, 1.0}
    assert abs(q.mean()) < 0.05
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), cfg.vel_norm, rtol=1e-12)
    assert abs(x.std() - cfg.loc_std) < 0.02
    assert np.all(np.abs(x) <= cfg.box_size)


def _half_step_energy(cfg, loc, vel, q):
    # recorded velocities lag positions by half a step: v_n ~ v_{n-1/2} + dt/2 F(x_n)
    S, Fr = loc.shape[:2]
    F, _ = nb.forces(cfg, loc.reshape(S * Fr, 5, 3), np.repeat(q, Fr, axis=0))
    v = vel + 0.5 * cfg.dt * F.reshape(loc.shape)
    return nb.energy(cfg, loc, v, q)


@pytest.mark.parametrize("field", [0.0, 1.0])
def test_conservation_laws(field):
    """Unclipped simulations conserve momentum (x, y; z too without field) and energy.

    Clipping of the force (the protocol's close-encounter clamp) breaks both; the
    test checks that this is what happens in clipped simulations, so it can fail
    if the clip or the pair forces are wrong.
    """
    cfg = nb.SimConfig(length=2000, sample_freq=100, field=field)
    q, x0, v0 = nb.sample_initial_conditions(cfg, 300, np.random.default_rng(2))
    loc, vel, clips = nb.simulate(cfg, q, x0, v0)
    ok = clips == 0
    assert ok.sum() > 100  # most short simulations never clip
    P = vel.sum(axis=2)  # [S, F, 3] (unit masses)
    t = np.arange(1, cfg.num_frames + 1) * cfg.sample_freq * cfg.dt
    expected = P[:, :1] + 0 * P
    expected[..., 2] += field * q.sum(1)[:, None] * (t - t[0])[None]
    err = np.abs(P - expected).max(axis=(1, 2))
    assert err[ok].max() < 1e-9
    E = _half_step_energy(cfg, loc, vel, q)
    drift = np.abs(E - E[:, :1]).max(axis=1)
    # symplectic Euler with dt = 1e-3: tiny drift except in close encounters
    assert np.median(drift[ok]) < 1e-4
    assert drift[ok].max() < 1e-2
    if (~ok).sum() >= 5:  # clipping is visible in momentum and energy
        assert err[~ok].max() > 1e-6
        assert np.median(drift[~ok]) > 1e-2


@pytest.mark.parametrize("protocol", nb.PROTOCOLS)
def test_generate_deterministic_and_chunk_independent(tmp_path, protocol):
    kw = dict(length=400, sample_freq=100, show_progress=False, protocol=protocol)
    a = nb.generate(str(tmp_path / "a"), "charged", 7, 3, 2, seed=5, chunk_size=3, **kw)
    b = nb.generate(str(tmp_path / "b"), "charged", 7, 3, 2, seed=5, chunk_size=100, **kw)
    c = nb.generate(str(tmp_path / "c"), "charged", 7, 3, 2, seed=6, **kw)
    for split in nb.SPLITS:
        za, zb, zc = np.load(a[split]), np.load(b[split]), np.load(c[split])
        assert za["loc"].dtype == np.float32
        assert za["loc"].shape == ({"train": 7, "val": 3, "test": 2}[split], 3, 5, 3)
        assert za["charges"].shape == za["loc"].shape[:1] + (5,)
        np.testing.assert_array_equal(za["loc"], zb["loc"])
        np.testing.assert_array_equal(za["vel"], zb["vel"])
        assert not np.array_equal(za["loc"], zc["loc"])
    # splits are independent draws
    assert not np.array_equal(np.load(a["train"])["loc"][:2], np.load(a["val"])["loc"][:2])
    meta = json.load(open(tmp_path / "a" / "meta.json"))
    assert meta["seed"] == 5 and meta["variant"] == "charged" and meta["dt"] == 0.001
    assert meta["protocol"] == protocol


def _published_generator(seed, counts, length, sample_freq):
    """EGNN's generate_dataset.py + ChargedParticlesSim.sample_trajectory as published,
    written out independently of pyg_implicit: one legacy np.random stream, simulations
    in order train, val, test; per simulation: charges by choice([-1, 0, 1], p=(.5, 0, .5)),
    positions randn(3, n), velocity directions randn(3, n) scaled to norm 0.5, the
    leapfrog, then two zero-variance noise draws of shape (T_save, 3, n)."""
    np.random.seed(seed)
    cfg = nb.SimConfig(length=length, sample_freq=sample_freq)
    t_save = length // sample_freq - 1
    out = []
    for count in counts:
        sims = []
        for _ in range(count):
            charges = np.random.choice(np.array([-1.0, 0.0, 1.0]), size=(5, 1), p=[0.5, 0, 0.5])
            loc = np.random.randn(3, 5) * 1.0
            vel = np.random.randn(3, 5)
            vel = vel * 0.5 / np.sqrt((vel ** 2).sum(axis=0)).reshape(1, -1)
            assert np.all(np.abs(loc) < 5.0)  # no wall reflection in these systems
            frames, _ = _loop_reference(cfg, charges[:, 0], loc.T.copy(), vel.T.copy())
            np.random.randn(t_save, 3, 5), np.random.randn(t_save, 3, 5)  # noise, variance 0
            sims.append((charges[:, 0], loc.T, vel.T, frames))
        out.append(sims)
    return out


def test_egnn_protocol_reproduces_the_published_generator(tmp_path):
    """--protocol egnn gives EGNN's systems: the first 3 of a 5-simulation training
    stream, then the validation and test systems that follow in the same stream."""
    paths = nb.generate(str(tmp_path), "charged", 3, 2, 2, seed=43, length=1000,
                        sample_freq=100, show_progress=False, protocol="egnn",
                        egnn_train_stream=5)
    train, val, test = _published_generator(43, (5, 2, 2), 1000, 100)
    for split, sims in (("train", train[:3]), ("val", val), ("test", test)):
        z = np.load(paths[split])
        assert len(z["charges"]) == len(sims)
        assert str(z["protocol"]) == "egnn"
        for s, (charges, loc0, vel0, frames) in enumerate(sims):
            np.testing.assert_array_equal(z["charges"][s], charges.astype(np.float32))
            # every frame, float32 files against the float64 published algorithm
            np.testing.assert_allclose(z["loc"][s], frames, rtol=1e-6, atol=1e-6)
    # the independent protocol draws other systems from the same seed
    other = nb.generate(str(tmp_path / "independent"), "charged", 3, 2, 2, seed=43,
                        length=1000, sample_freq=100, show_progress=False,
                        protocol="independent")
    assert not np.array_equal(np.load(other["train"])["loc"], np.load(paths["train"])["loc"])
    # the real stream: EGNN's first training system, positions at frame 0
    cfg = nb.SimConfig()
    (q, x, v), _, _ = nb.egnn_initial_conditions(cfg, (1, 0, 0), seed=43)
    np.random.seed(43)
    charges = np.random.choice(np.array([-1.0, 0.0, 1.0]), size=(5, 1), p=[0.5, 0, 0.5])
    np.testing.assert_array_equal(q[0], charges[:, 0])
    np.testing.assert_array_equal(x[0], (np.random.randn(3, 5) * 1.0).T)


def test_field_variant_breaks_symmetry_only_along_z(tmp_path):
    cfg = nb.SimConfig.for_variant("charged-field", length=200, sample_freq=100)
    assert cfg.field == 1.0
    q, x0, v0 = nb.sample_initial_conditions(cfg, 4, np.random.default_rng(3))
    loc, _, _ = nb.simulate(cfg, q, x0, v0)
    th = 0.7
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])
    M = np.diag([1.0, -1.0, 1.0])  # mirror in a vertical plane
    for G in (R, M @ R):
        locg, _, _ = nb.simulate(cfg, q, x0 @ G.T, v0 @ G.T)
        np.testing.assert_allclose(locg, loc @ G.T, atol=1e-9)
    # a rotation about x (tilting z) is not a symmetry with the field on
    Rx = np.array([[1, 0, 0], [0, np.cos(th), -np.sin(th)], [0, np.sin(th), np.cos(th)]])
    locg, _, _ = nb.simulate(cfg, q, x0 @ Rx.T, v0 @ Rx.T)
    assert np.abs(locg - loc @ Rx.T).max() > 1e-3


@pytest.mark.parametrize("variant", nb.VARIANTS)
def test_reverse_in_time_retraces_the_simulation(variant):
    """Simulating from the reversed last frame lands on the first frame (float64); the
    naive reversal, negating the recorded velocity only, is off by half a kick."""
    cfg = nb.SimConfig.for_variant(variant, length=600, sample_freq=100)
    q, x0, v0 = nb.sample_initial_conditions(cfg, 64, np.random.default_rng(7))
    loc, vel, clips = nb.simulate(cfg, q, x0, v0)
    back = nb.SimConfig.for_variant(variant, length=800, sample_freq=400)  # one frame, 400 steps
    u = nb.reverse_in_time(cfg, loc[:, 4], vel[:, 4], q)
    retraced, _, _ = nb.simulate(back, q, loc[:, 4], u)
    err = np.abs(retraced[:, 0] - loc[:, 0]).max(axis=(1, 2))
    naive, _, _ = nb.simulate(back, q, loc[:, 4], -vel[:, 4])
    naive_err = np.abs(naive[:, 0] - loc[:, 0]).max(axis=(1, 2))
    smooth = clips == 0  # chaotic clipped encounters amplify rounding
    assert smooth.sum() > 32
    assert err[smooth].max() < 1e-9
    assert np.median(naive_err[smooth]) > 1e-6


def test_time_reversed_split(tmp_path):
    nb.generate(str(tmp_path), "charged-field", 10, 2, 2, seed=3, length=1000,
                show_progress=False)
    fwd = nb.load_split(str(tmp_path), "train", 2, 7)
    rev = nb.load_split(str(tmp_path), "train", 2, 7, time_reversed=True)
    assert torch.equal(rev["pos"], fwd["target"]) and torch.equal(rev["target"], fwd["pos"])
    assert torch.equal(rev["charges"], fwd["charges"]) and rev["horizon"] == fwd["horizon"] == 0.5
    assert rev["vel"].dtype == torch.float32
    # the reversed inputs, simulated 500 steps, give the targets (up to the float32 storage)
    cfg = nb.SimConfig.for_variant("charged-field", length=1000, sample_freq=500)
    out, _, _ = nb.simulate(cfg, rev["charges"].double().numpy(), rev["pos"].double().numpy(),
                            rev["vel"].double().numpy())
    err = np.abs(out[:, 0] - rev["target"].double().numpy()).max(axis=(1, 2))
    assert np.median(err) < 1e-5


def _signed_permutations():
    """The 48 signed permutation matrices: the symmetries of the cube, O_h."""
    import itertools

    return [np.eye(3)[list(p)] * np.array(s)[:, None] for p in itertools.permutations(range(3))
            for s in itertools.product([1.0, -1.0], repeat=3)]


def test_force_clipping_leaves_only_the_cube_symmetries():
    """Clipping each Cartesian force component (the published protocol) commutes with
    permuting and flipping the axes, and with nothing else: with a close encounter the
    simulator is O_h-, not O(3)-equivariant (why ``--group fullocta`` exists)."""
    cfg = nb.SimConfig(length=400, sample_freq=100)
    q = np.array([[1.0, -1.0, 1.0, -1.0, 1.0]])
    x0 = np.array([[[-0.1, 0.01, 0.02], [0.1, -0.01, 0.0], [1.5, 0.3, -0.4],
                    [-1.2, 1.1, 0.5], [0.4, -1.3, 1.0]]])
    v0 = np.array([[[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.3, 0.1],
                    [0.1, -0.2, 0.3], [-0.3, 0.0, 0.2]]])
    loc, _, clip_steps = nb.simulate(cfg, q, x0, v0)
    assert clip_steps[0] > 0  # the encounter does get clipped
    perms = _signed_permutations()
    assert len({P.tobytes() for P in perms}) == 48
    for P in perms:
        locg, _, _ = nb.simulate(cfg, q, x0 @ P.T, v0 @ P.T)
        np.testing.assert_allclose(locg, loc @ P.T, atol=1e-8)
    th = 0.7
    R = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1.0]])
    locg, _, _ = nb.simulate(cfg, q, x0 @ R.T, v0 @ R.T)
    assert np.abs(locg - loc @ R.T).max() > 1e-3


def test_dataset_graphs(tmp_path):
    nb.generate(str(tmp_path), "charged", 4, 2, 2, seed=0, length=500, sample_freq=100,
                show_progress=False)
    ds = nb.NBodyDataset(str(tmp_path), "train", frame_0=1, frame_T=3)
    assert len(ds) == 4 and ds.variant == "charged"
    d = ds[1]
    z = np.load(tmp_path / "train.npz")
    assert d.pos.shape == (5, 3) and d.vel.shape == (5, 3) and d.y.shape == (5, 3)
    assert d.edge_index.shape == (2, 20)
    assert (d.edge_index[0] != d.edge_index[1]).all()
    np.testing.assert_array_equal(d.pos.numpy(), z["loc"][1, 1])
    np.testing.assert_array_equal(d.y.numpy(), z["loc"][1, 3])
    q = d.charges[:, 0]
    torch.testing.assert_close(d.edge_attr[:, 0], q[d.edge_index[0]] * q[d.edge_index[1]])
    with pytest.raises(ValueError, match="frame"):
        nb.NBodyDataset(str(tmp_path), "train", frame_0=1, frame_T=9)


# --------------------------------------------------------------------------- model

def _small_model(group, **kw):
    from pyg_implicit.experiments.nbody.model import NBodyModel

    # the sphere groups' Fourier nonlinearity on the icosahedral grid is exactly
    # equivariant to the 60 (SO(3)) / 120 (O(3)) icosahedral symmetries
    conv_kwargs = {"grid": "ico"} if group in ("o3", "so3") else {}
    cfg = dict(group=group, num_layers=2, scalars=3, vectors=2, tensors=1, hidden_channels=4,
               hidden_layers=1, band_limit=1, conv_kwargs=conv_kwargs)
    cfg.update(kw)
    torch.manual_seed(0)
    model = NBodyModel(**cfg).double().eval()
    if model.pos_updates:  # zero-initialised: make the positions actually move
        with torch.no_grad():
            model.update_weights.normal_()
            model.update_vel.fill_(0.5)
    return model


def _inputs(B=3, seed=0):
    from pyg_implicit.experiments.nbody.model import fully_connected_edges

    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(B * 5, 3, generator=g, dtype=torch.float64)
    vel = torch.randn(B * 5, 3, generator=g, dtype=torch.float64) * 0.5
    q = torch.randint(0, 2, (B * 5,), generator=g).double() * 2 - 1
    return pos, vel, q, fully_connected_edges(B, 5)


def _exact_matrices(model, count=6):
    """3x3 matrices of group elements the model is exactly equivariant to (float64)."""
    gs = model.gspace
    elements = None
    kernels = [m for m in model.modules() if hasattr(m, "exact_elements")
               and type(m).__name__ == "ImplicitKernel"]
    assert kernels
    for k in kernels:
        if k.exact_elements is not None:
            elements = list(k.exact_elements)
            break
    if elements is None:  # exact for the whole group
        elements = list(gs.testing_elements) if hasattr(gs, "testing_elements") else \
            [gs.fibergroup.sample() for _ in range(count)]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(elements), size=min(count, len(elements)), replace=False)
    mats = [np.asarray(gs.basespace_action(elements[i]), dtype=np.float64) for i in pick]
    # always include a reflection when the group has one
    refl = [e for e in elements if np.linalg.det(gs.basespace_action(e)) < 0]
    if refl:
        mats.append(np.asarray(gs.basespace_action(refl[len(refl) // 2]), dtype=np.float64))
    return [torch.from_numpy(M) for M in mats]


def _equiv_error(model, M, t=None):
    pos, vel, q, ei = _inputs()
    with torch.no_grad():
        out = model(pos, vel, q, ei)
        shift = torch.zeros(3, dtype=torch.float64) if t is None else t
        out_g = model(pos @ M.T + shift, vel @ M.T, q, ei)
    ref = out @ M.T + shift
    return float((out_g - ref).norm() / ref.norm())


def _rot(axis, th):
    c, s = np.cos(th), np.sin(th)
    R = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[axis]
    return torch.tensor(R, dtype=torch.float64)


# the larger-group element each model must NOT be equivariant to
_BREAKERS = {
    "so3": torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)),  # mirror z
    "so2z": torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)),  # vertical mirror
    "o2z": _rot("x", 0.9),  # tilts the z axis
    "octa": torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)),  # mirror z
    "fullocta": _rot("x", 0.9),  # not a symmetry of the cube
}


@pytest.mark.parametrize("pos_updates", [False, True], ids=["static", "pos_updates"])
@pytest.mark.parametrize("group", ["o3", "so3", "so2z", "o2z", "octa", "fullocta"])
def test_model_equivariance(group, pos_updates):
    model = _small_model(group, pos_updates=pos_updates)
    # translations: exact
    assert _equiv_error(model, torch.eye(3, dtype=torch.float64),
                        torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)) < 1e-12
    mats = _exact_matrices(model)
    assert any(not torch.allclose(M, torch.eye(3, dtype=torch.float64)) for M in mats)
    for M in mats:
        assert _equiv_error(model, M) < 1e-9, M
    if group in _BREAKERS:
        assert _equiv_error(model, _BREAKERS[group]) > 1e-3


def test_fullocta_model_has_every_symmetry_of_the_simulator():
    """escnn's full octahedral group acts on R^3 as exactly the 48 signed permutations
    of the axes, the symmetries that force clipping leaves (tested above)."""
    model = _small_model("fullocta")
    for P in _signed_permutations():
        assert _equiv_error(model, torch.from_numpy(P)) < 1e-9, P


def test_model_charge_flip():
    """Flipping every charge leaves the physics unchanged; without the charge as a node
    feature the model is invariant to it, with it the model is not."""
    pos, vel, q, ei = _inputs()
    with torch.no_grad():
        for node_charge in (False, True):
            model = _small_model("so2z", node_charge=node_charge)
            out, out_flip = model(pos, vel, q, ei), model(pos, vel, -q, ei)
            err = float((out - out_flip).norm() / out.norm())
            assert (err > 1e-6) if node_charge else (err < 1e-13), (node_charge, err)


def test_perturb_inputs_is_free_flight():
    """The noise moves the targets as free flight over the horizon would."""
    from pyg_implicit.experiments.nbody.train import perturb_inputs

    g = torch.Generator().manual_seed(0)
    b = {k: torch.randn(10, 3, generator=g) for k in ("pos", "vel", "target")}
    b["charges"] = torch.ones(10)
    torch.manual_seed(1)
    n = perturb_inputs(b, 0.1, 2.0)
    dp, dv = n["pos"] - b["pos"], n["vel"] - b["vel"]
    assert 0.05 < float(dp.std()) < 0.2 and 0.05 < float(dv.std()) < 0.2
    torch.testing.assert_close(n["target"] - b["target"], dp + 2.0 * dv)
    assert n["charges"] is b["charges"]


@pytest.mark.parametrize("relative_velocity", [False, True])
def test_model_galilean_boost(relative_velocity):
    """A boost v -> v + u moves the true targets by T u (T = 1000 dt = 1); with relative
    velocities the model's output moves by mean_vel_coef * u exactly, without it not."""
    pos, vel, q, ei = _inputs()
    u = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    model = _small_model("o2z", relative_velocity=relative_velocity)
    with torch.no_grad():
        if relative_velocity:
            model.mean_vel_coef.fill_(0.7)
        shift = model(pos, vel + u, q, ei) - model(pos, vel, q, ei)
    err = float((shift - 0.7 * u).norm() / (0.7 * u).norm())
    assert (err < 1e-12) if relative_velocity else (err > 1e-3), err


def test_model_uses_the_public_blocks():
    """No private gate or norm: the model's nonlinearity and norms are the blocks of
    pyg_implicit.nn, and the removed ablation options are gone."""
    from pyg_implicit.experiments.nbody.model import NBodyModel
    from pyg_implicit.nn import EquivariantLayerNorm, EquivariantNonlinearity

    model = _small_model("so2z")
    assert isinstance(model.gate, EquivariantNonlinearity) and model.gate.kind == "gated"
    assert all(isinstance(n, EquivariantLayerNorm) and n.mode == "node" for n in model.norms)
    assert model.gate.in_type == model.convs[0].out_type
    for removed in ("messages", "dropout", "coulomb_attr", "axis_attr"):
        with pytest.raises(TypeError, match=removed):
            NBodyModel(**{removed: None})


def test_model_output_and_gradients():
    """The model on its default backend against the same model on the reference
    backend (materialised kernels): output and every parameter gradient."""
    from compare import assert_rows_close

    pos, vel, q, ei = _inputs()
    results = []
    for conv_kwargs in ({}, {"backend": "reference"}):
        model = _small_model("so2z", conv_kwargs=conv_kwargs).train()
        out = model(pos, vel, q, ei)
        params = [p for p in model.parameters() if p.requires_grad]
        results.append((out, torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True),
                        [n for n, p in model.named_parameters() if p.requires_grad]))
    (out, grads, names), (out_ref, grads_ref, _) = results
    assert out.shape == (15, 3) and torch.isfinite(out).all()
    assert_rows_close(out, out_ref, 1e-10, "output")
    missing = [n for n, g in zip(names, grads) if g is None]
    assert not missing, missing
    for name, g, g_ref in zip(names, grads, grads_ref):
        assert_rows_close(g, g_ref, 1e-10, f"gradient of {name}")


def test_position_loss():
    from pyg_implicit.experiments.nbody.train import position_loss

    g = torch.Generator().manual_seed(0)
    target = torch.randn(20, 3, generator=g, dtype=torch.float64)
    small = target + 0.01 * torch.randn(20, 3, generator=g, dtype=torch.float64)
    mse = torch.nn.functional.mse_loss(small, target)
    torch.testing.assert_close(position_loss(small, target), mse)
    torch.testing.assert_close(position_loss(small, target, 1.0), mse)  # all below delta
    pred = (target + torch.randn(20, 3, generator=g, dtype=torch.float64)).requires_grad_()
    e = (pred - target).norm(dim=-1)
    assert (e > 1.5).any() and (e < 1.5).any()
    expected = torch.where(e <= 1.5, e ** 2, 3.0 * e - 2.25).mean() / 3
    loss = position_loss(pred, target, 1.5)
    torch.testing.assert_close(loss, expected)
    # the pull of each particle is capped at 2 delta / (3 N) in norm
    loss.backward()
    assert pred.grad.norm(dim=-1).max() <= 2 * 1.5 / (3 * 20) + 1e-12
    # rotation-invariant
    R = _rot("x", 0.9)
    torch.testing.assert_close(position_loss(pred.detach() @ R.T, target @ R.T, 1.5),
                               loss.detach())


def test_time_reversal_warns_only_a_model_blind_to_the_field_axis():
    from pyg_implicit.experiments.nbody.model import AXIAL_GROUPS, GROUPS
    from pyg_implicit.experiments.nbody.train import time_reversal_warning as _time_reversal_warning

    warned = {g for g in GROUPS if _time_reversal_warning("charged-field", g, True)}
    assert warned == set(GROUPS) - set(AXIAL_GROUPS) == {"o3", "so3", "octa", "fullocta"}
    assert "--no-time-reversal" in _time_reversal_warning("charged-field", "o3", True)
    assert not any(_time_reversal_warning(v, g, tr) for g in GROUPS
                   for v, tr in (("charged-field", False), ("charged", True)))
