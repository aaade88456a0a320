"""QM9 experiment: the dataset on a fixture of 37 real molecules (units, atoms, bonds,
failed bond perception, the original XYZ format, the split), the O(3) model's
equivariance in float64, the baselines' invariance, DimeNet's triplets, and the
command line (one epoch of the implicit model and of SchNet)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from helpers import REPO, train_cli
from pyg_implicit.experiments.qm9 import data as qd
from pyg_implicit.experiments.qm9.model import (DimeNetPlusPlusQM9, SchNetQM9, SteerableQM9,
                                               bond_features, triplets)

FIXTURE = os.path.join(REPO, "tests", "data", "qm9")
SINGLE, DOUBLE, TRIPLE, AROMATIC, UNPERCEIVED = range(5)


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    return qd.QM9Molecules(str(tmp_path_factory.mktemp("qm9cache")), FIXTURE)


def by_index(dataset, index):
    return dataset[int((dataset.idx == index).nonzero()[0, 0])]


def bond_types(mol):
    """Sorted bond types of a molecule (each bond once)."""
    keep = mol.edge_index[0] < mol.edge_index[1]
    return sorted(mol.edge_attr[keep].argmax(1).tolist())


def test_fixture_units_atoms_and_bonds(molecules):
    assert len(molecules) == 37 and molecules.idx.tolist() == sorted(molecules.idx.tolist())
    assert molecules.target_names == ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve",
                                      "U0", "U", "H", "G", "Cv")
    ch4 = by_index(molecules, 1)
    assert ch4.z.tolist() == [6, 1, 1, 1, 1] and ch4.x.argmax(1).tolist() == [1, 0, 0, 0, 0]
    y = dict(zip(molecules.target_names, ch4.y[0].tolist()))
    # HOMO -0.3877 Ha, gap 0.5048 Ha, U0 -40.47893 Ha; 1 Ha = 27211.386245988 meV
    assert y["homo"] == pytest.approx(-10549.854447569547, rel=1e-6)
    assert y["gap"] == pytest.approx(13736.307776974743, rel=1e-6)
    assert y["U0"] == pytest.approx(-1101487.799054311, rel=1e-6)
    # mu [D], alpha [a0^3], r2 [a0^2], Cv [cal/mol K] as released
    assert (y["mu"], y["alpha"], y["r2"], y["Cv"]) == pytest.approx((0.0, 13.21, 35.3641, 6.469))
    assert ch4.pos[0].tolist() == pytest.approx([-0.0126981359, 1.0858041578, 0.0080009958])
    assert bond_types(ch4) == [SINGLE] * 4 and ch4.edge_index.shape == (2, 8)
    assert bond_types(by_index(molecules, 5)) == [SINGLE, TRIPLE]        # HC#N
    assert bond_types(by_index(molecules, 6)) == [SINGLE, SINGLE, DOUBLE]  # H2C=O
    pyrrole = by_index(molecules, 50)
    assert bond_types(pyrrole).count(AROMATIC) == 5 and pyrrole.z.tolist().count(1) == 5
    cf4 = by_index(molecules, 184)
    assert cf4.x.argmax(1).tolist().count(4) == 4 and bond_types(cf4) == [SINGLE] * 4


def test_bond_perception_failures_are_counted_and_kept(molecules):
    stats = molecules.stats
    # bicyclo[1.1.1]pentane and kin: covalent radii bond the bridgeheads, Hueckel does not
    assert stats["bond_source"] == {"covalent radii": 31, "extended Hueckel": 4,
                                    "smiles template": 0, "connectivity only": 2}
    assert stats["connectivity_only_indices"] == [133831, 133850]
    bicyclo = by_index(molecules, 105)
    assert int(bicyclo.bond_source) == 1 and len(bond_types(bicyclo)) == 6 + 8  # C5H8: 6 C-C, 8 C-H
    kept = by_index(molecules, 133831)
    assert int(kept.bond_source) == 3 and set(bond_types(kept)) == {UNPERCEIVED}
    assert kept.edge_index.shape[1] > 0


def test_failed_perception_of_a_radical_keeps_its_connectivity():
    """A methyl radical (odd electron count): no neutral closed-shell bond orders and a
    SMILES that does not match; the three C-H bonds stay, typed unperceived."""
    pos = np.array([[0.0, 0.0, 0.0], [1.08, 0.0, 0.0], [-0.54, 0.935, 0.0],
                    [-0.54, -0.935, 0.0]])
    pairs, types, source = qd.perceive_bonds(["C", "H", "H", "H"], pos, "C")
    assert qd.BOND_SOURCES[source] == "connectivity only"
    assert pairs.tolist() == [[0, 1], [0, 2], [0, 3]] and types.tolist() == [UNPERCEIVED] * 3


CH4_XYZ = """5
gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t
C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689
H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921
H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922
H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923
H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923
1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078
C\tC\t
InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4
"""


def test_original_xyz_files_read_like_the_csv(tmp_path, molecules):
    src = tmp_path / "xyz"
    src.mkdir()
    (src / "dsgdb9nsd_000001.xyz").write_text(CH4_XYZ)
    # the release writes some small numbers in Mathematica's notation
    (src / "dsgdb9nsd_000002.xyz").write_text(
        CH4_XYZ.replace("gdb 1\t", "gdb 2\t").replace("0.\t13.21", "1.5*^-3\t13.21"))
    rows = qd.read_source(str(src))
    assert [r["index"] for r in rows] == [1, 2]
    assert rows[1]["properties"]["Dipole_debye"] == pytest.approx(1.5e-3)
    from_xyz = qd.QM9Molecules(str(tmp_path / "cache"), str(src))
    ch4 = by_index(molecules, 1)
    for key in ("x", "z", "pos", "edge_index", "edge_attr", "y"):
        assert torch.equal(from_xyz[0][key], ch4[key]), key


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qd.QM9Molecules(str(tmp_path / "c"), str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="qm9_part"):
        qd.QM9Molecules(str(tmp_path / "c"), str(tmp_path / "empty"))


def test_cormorant_split():
    split = qd.cormorant_split(qd.NUM_MOLECULES)
    assert [len(split[k]) for k in ("train", "val", "test")] == [100_000, 17_748, 13_083]
    every = np.concatenate([split["train"], split["val"], split["test"]])
    assert np.array_equal(np.sort(every), np.arange(qd.NUM_MOLECULES))
    np.random.seed(0)  # Cormorant's own code, with the global generator
    assert np.array_equal(every, np.random.permutation(qd.NUM_MOLECULES))
    again = qd.cormorant_split(qd.NUM_MOLECULES)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    with pytest.raises(ValueError, match="130831"):
        qd.cormorant_split(37)
    small = qd.cormorant_split(37, proportional=True)
    assert [len(small[k]) for k in ("train", "val", "test")] == [28, 6, 3]


def test_bond_features_look_up_bonds():
    bond_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    bond_attr = torch.eye(5)[[0, 0, 1, 1]]
    edges = torch.tensor([[2, 0, 0, 1, 3], [1, 2, 1, 2, 0]])
    out = bond_features(edges, bond_index, bond_attr, 4)
    assert out.argmax(1).tolist()[:4] == [1, 0, 0, 1]
    assert out[[1, 4]].abs().sum() == 0 and out[[0, 2, 3]].sum(1).tolist() == [1, 1, 1]


def test_triplets_match_a_brute_force_enumeration():
    gen = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, 9, (2, 40), generator=gen)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    i, j, idx_i, idx_j, idx_k, idx_kj, idx_ji = triplets(edge_index, 9)
    row, col = edge_index
    assert torch.equal(i, col) and torch.equal(j, row)
    expected = {(int(col[a]), int(row[a]), int(row[b]), b, a)
                for a in range(row.numel()) for b in range(row.numel())
                if col[b] == row[a] and row[b] != col[a]}
    got = set(zip(idx_i.tolist(), idx_j.tolist(), idx_k.tolist(), idx_kj.tolist(),
                  idx_ji.tolist()))
    assert got == expected and len(idx_i) == len(expected) > 0


def _batch(molecules, n=6, dtype=torch.float64):
    b = Batch.from_data_list([molecules[i] for i in range(10, 10 + n)])
    b.pos, b.x, b.edge_attr = b.pos.to(dtype), b.x.to(dtype), b.edge_attr.to(dtype)
    return b


def _moved(b, R, shift):
    moved = b.clone()
    moved.pos = b.pos @ R.T + shift
    return moved


def _o3_elements(model, count=3):
    gs = model.net.gspace
    for _ in range(count):
        g = gs.fibergroup.sample()
        yield g, torch.as_tensor(gs.basespace_action(g), dtype=torch.float64)


CONFIGS = [("implicit", "bond+atoms", "bonds"), ("implicit", "bond", "radius"),
           ("implicit", "none", "bonds"), ("standard", "none", "radius")]


@pytest.mark.parametrize("kernel,attributes,graph", CONFIGS)
def test_steerable_model_is_o3_equivariant_in_float64(molecules, kernel, attributes, graph):
    torch.manual_seed(0)
    conv = ({"hidden_channels": 4, "hidden_layers": 1, "kernel_nonlinearity": "gated"}
            if kernel == "implicit" else {})
    model = SteerableQM9(attributes, kernel, graph, channels=3, num_layers=2,
                         conv_kwargs=conv).double().eval()
    b = _batch(molecules)

    def hidden(batch):
        edge_index, edge_attr = model.edges(batch)
        h = model.net.embedding(batch.x)
        for block in model.net.blocks:
            h = block(h, batch.pos, edge_index, edge_attr, batch.batch, batch.num_graphs)
        return h

    # escnn's analytic O(3) basis comes from numerically solved coefficients (~1e-8)
    tol = 1e-9 if kernel == "implicit" else 1e-6
    with torch.no_grad():
        h, y = hidden(b), model(b)
        rep = model.net.hidden_types[-1].representation
        for g, R in _o3_elements(model):
            moved = _moved(b, R, torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64))
            rho = torch.as_tensor(rep(g), dtype=torch.float64)
            assert float((hidden(moved) - h @ rho.T).abs().max() / h.abs().max()) < tol
            assert float((model(moved) - y).abs().max() / y.abs().max()) < tol
        # not vacuous: the hidden fields do turn (non-scalar fields)
        g, R = next(_o3_elements(model, 1))
        assert float((hidden(_moved(b, R, 0.0)) - h).abs().max()) > 1e-3 * float(h.abs().max())


def test_standard_kernel_refuses_attributes():
    with pytest.raises(ValueError, match="attributes must be 'none'"):
        SteerableQM9("bond", "standard")
    with pytest.raises(ValueError, match="attributes must be one of"):
        SteerableQM9("charges")


@pytest.mark.parametrize("cls", [SchNetQM9, DimeNetPlusPlusQM9])
def test_baselines_are_invariant_in_float64(molecules, cls):
    torch.manual_seed(0)
    small = ({"hidden_channels": 16, "num_filters": 16, "num_interactions": 2}
             if cls is SchNetQM9 else {"hidden_channels": 16, "num_blocks": 2,
                                       "out_emb_channels": 16, "int_emb_size": 8,
                                       # PyG zeroes the output layers: outputs would be 0
                                       "output_initializer": "glorot_orthogonal"})
    model = cls(**small).double().eval()
    b = _batch(molecules)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model(b)
        assert y.shape == (b.num_graphs,)
        for _ in range(3):
            Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
            moved = _moved(b, Q, torch.randn(3, generator=gen, dtype=torch.float64))
            assert float((model(moved) - y).abs().max() / y.abs().max()) < 1e-10


def _train(args, tmp_path, ok=True):
    return train_cli("qm9", args, tmp_path, ok)


FIXTURE_ARGS = ["--data", FIXTURE, "--subset", "proportional", "--epochs", "1",
                "--batch-size", "8"]
SMALL = ["--channels", "2", "--num-layers", "2", "--hidden-channels", "2",
         "--hidden-layers", "1"]


@pytest.mark.parametrize("model", ["steerable", "schnet"])
def test_cli_one_epoch_on_the_fixture(tmp_path, molecules, model):
    run = tmp_path / "run"
    extra = SMALL if model == "steerable" else []
    _train([*FIXTURE_ARGS, "--model", model, "--cache", str(tmp_path / "cache"),
            "--out", str(run), *extra], tmp_path)
    with open(run / "result.json") as f:
        r = json.load(f)
    assert r["task"] == "qm9" and r["target"] == "homo" and r["unit"] == "meV"
    assert r["epochs_completed"] == 1 and r["test_mae"] > 0 and r["best_val_mae"] > 0
    assert (r["train_samples"], r["val_samples"], r["test_samples"]) == (28, 6, 3)
    assert r["label"] == ("o3_implicit_bond_atoms" if model == "steerable" else "schnet")
    # the target is normalised with the training split's statistics only
    train = qd.cormorant_split(37, proportional=True)["train"]
    homo = molecules.y[torch.from_numpy(train), 2].double()
    assert r["target_mean"] == pytest.approx(float(homo.mean()))
    assert r["target_std"] == pytest.approx(float(homo.std()))
    assert r["dataset"]["bond_source"]["connectivity only"] == 2
    assert r["published_test_mae_homo_mev"]["O(3) implicit + bond and atom types"] == 30.6


def test_cli_errors_are_clear(tmp_path):
    out = _train([*FIXTURE_ARGS, "--kernel", "standard", "--attributes", "bond",
                  "--out", str(tmp_path / "r1")], tmp_path, ok=False)
    assert "--attributes none" in out and "Traceback" not in out
    out = _train(["--data", FIXTURE, "--out", str(tmp_path / "r2")], tmp_path, ok=False)
    assert "130831" in out and "--subset proportional" in out and "Traceback" not in out
    out = _train(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")],
                 tmp_path, ok=False)
    assert "nowhere" in out and "Traceback" not in out


def test_cli_epoch_and_validation_subsets(tmp_path):
    """--epoch-size caps the steps of every epoch; --val-size the validation split."""
    import csv

    run = tmp_path / "run"
    _train([*FIXTURE_ARGS, "--epochs", "2", "--epoch-size", "16", "--val-size", "4",
            "--cache", str(tmp_path / "cache"), "--out", str(run), *SMALL], tmp_path)
    with open(run / "result.json") as f:
        r = json.load(f)
    assert r["val_samples"] == 4 and r["train_samples"] == 28
    assert r["dataset"]["epoch_size"] == 16 and r["epochs_completed"] == 2
    with open(run / "logs" / "version_0" / "metrics.csv") as f:
        steps = [row for row in csv.DictReader(f) if row.get("loss")]
    assert len(steps) == 2 * 2  # 2 epochs of 16 // 8 batches (of 28 molecules)


def test_changed_source_is_reprocessed(tmp_path, molecules):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    part = src / "qm9_part1.csv"
    part.write_text(part.read_text().replace(",-0.3877,", ",-0.3000,", 1))
    changed = qd.QM9Molecules(str(tmp_path / "cache"), str(src))
    assert changed.fingerprint != molecules.fingerprint
    assert changed.y[0, 2] == pytest.approx(-0.3 * qd.HARTREE_TO_MEV, rel=1e-6)
    assert by_index(molecules, 1).y[0, 2] == pytest.approx(-0.3877 * qd.HARTREE_TO_MEV,
                                                          rel=1e-6)
