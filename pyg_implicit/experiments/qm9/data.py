r"""QM9 (Ramakrishnan et al., *Scientific Data* 1, 140022, 2014) as a PyG dataset: the
installed ``qm9pack`` package's CSV files (or the original ``dsgdb9nsd_*.xyz`` files),
12 targets in the units papers report, atom types, perceived bonds, the Cormorant /
EGNN / SEGNN split.

Molecules
    ``qm9pack`` ships the 130,831 molecules that passed the release's consistency
    check: the 3,054 "uncharacterised" ones (their relaxed geometry no longer matches
    their GDB-17 graph) are already absent, which is exactly what Cormorant, EGNN and
    SEGNN (and the implicit-kernel paper's code, through PyG's ``QM9``) exclude. A
    folder of the original XYZ files is read as it is; whether it still holds the 3,054
    is the user's business (:func:`cormorant_split` refuses a count other than 130,831
    unless asked for a proportional split).

Targets (:data:`TARGETS`, PyG's order)
    mu [D], alpha [a0^3], homo / lumo / gap [meV], r2 [a0^2], zpve [meV], U0 / U / H /
    G [meV] (total energies, not atomisation energies), Cv [cal/(mol K)]. The release
    gives energies in Hartree: 1 Ha = 27,211.386245988 meV (CODATA 2018).

Bonds (:func:`perceive_bonds`)
    From the coordinates with RDKit: connectivity from covalent radii
    (``rdDetermineBonds.DetermineConnectivity``), then bond orders by the xyz2mol
    algorithm for a neutral molecule (``DetermineBondOrders(charge=0)``) and
    sanitisation (aromatic bonds marked). Covalent radii over-connect strained rings
    (bicyclo[1.1.1]pentane's bridgeheads, 1.87 Å apart, get a bond; then no valid
    orders exist): for those (about 5% of QM9) the connectivity comes from extended
    Hückel bond orders instead (``useHueckel=True``, ~2 ms a molecule). When both
    fail, the orders come from the release's SMILES matched onto the Hückel
    connectivity (``AssignBondOrdersFromTemplate``); when that fails too, the molecule
    keeps its connectivity with every bond typed ``unperceived``. Each molecule
    records which of the four happened (``data.bond_source``) and the dataset counts
    them (:attr:`QM9Molecules.stats`): nothing is dropped.

Split (:func:`cormorant_split`)
    ``numpy.random.seed(0)``, a permutation of the 130,831 molecules in index order,
    then 100,000 train, 17,748 validation and the last 13,083 (10%) test: Cormorant's
    ``gen_splits_gdb9``, used by EGNN and SEGNN.

Command line (process once, print the counts)::

    python -m pyg_implicit.experiments.qm9.data [--source DIR] [--root CACHE]
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from pyg_implicit.experiments.runs import write_json

HARTREE_TO_MEV = 27211.386245988
ATOM_TYPES = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
BOND_TYPES = ("single", "double", "triple", "aromatic", "unperceived")
# how each molecule's bond orders were found (data.bond_source)
BOND_SOURCES = ("covalent radii", "extended Hueckel", "smiles template", "connectivity only")
CONNECTIVITY_ONLY = BOND_SOURCES.index("connectivity only")
# name -> (qm9pack column, factor to the reported unit, unit); PyG's target order
TARGETS: Dict[str, Tuple[str, float, str]] = {
    "mu": ("Dipole_debye", 1.0, "D"),
    "alpha": ("Polarizability_bohr3", 1.0, "a0^3"),
    "homo": ("HOMO_au", HARTREE_TO_MEV, "meV"),
    "lumo": ("LUMO_au", HARTREE_TO_MEV, "meV"),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_MEV, "meV"),
    "r2": ("R2_bohr2", 1.0, "a0^2"),
    "zpve": ("ZPVE_au", HARTREE_TO_MEV, "meV"),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_MEV, "meV"),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_MEV, "meV"),
    "H": ("Enthalphy_298K_au", HARTREE_TO_MEV, "meV"),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_MEV, "meV"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)"),
}
# the properties on line 2 of an original XYZ file, after "gdb <index>"
_XYZ_PROPERTIES = ("RotA_GHz", "RotB_GHz", "RotC_GHz", "Dipole_debye",
                   "Polarizability_bohr3", "HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au",
                   "R2_bohr2", "ZPVE_au", "InternalEnergy_0K_au", "InternalEnergy_298K_au",
                   "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au", "Heatcapacity_Cv_cal_mol_K")
NUM_MOLECULES = 130_831  # 133,885 minus the 3,054 uncharacterised
# bump when processing changes: caches written by older code are then reprocessed
CACHE_VERSION = 2


# --------------------------------------------------------------------------- sources

def qm9pack_folder() -> str:
    """The data folder of the installed ``qm9pack`` (``requirements.txt`` installs it)."""
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the qm9pack package is not installed (pip install qm9pack; "
                                "`make venv` does): it carries QM9")
    return os.path.join(os.path.dirname(spec.origin), "data")


def source_files(source: str) -> List[str]:
    """The files QM9 is read from in ``source``: ``qm9_part*.csv`` (qm9pack's layout,
    with ``qm9_polarizability.csv`` ignored: the main files carry alpha) or, failing
    that, ``*.xyz`` (the original release)."""
    if not os.path.isdir(source):
        raise FileNotFoundError(f"QM9 source folder {source!r} does not exist")
    files = sorted(glob.glob(os.path.join(source, "qm9_part*.csv")))
    if not files:
        files = sorted(glob.glob(os.path.join(source, "*.xyz")))
    if not files:
        raise FileNotFoundError(f"{source!r} holds neither qm9pack's qm9_part*.csv nor "
                                "QM9's original dsgdb9nsd_*.xyz files")
    return files


def _floats(text: str) -> np.ndarray:
    """Numbers of a bracketed list such as ``[[0.5,0.,1.],...]`` (``0.`` is not JSON)."""
    return np.array(text.replace("[", "").replace("]", "").split(","), dtype=np.float64)


def read_csv(path: str) -> List[Dict]:
    """qm9pack's rows as ``{"index", "elements", "pos" [N, 3] (Å), "smiles",
    "properties": {column: float}}``."""
    csv.field_size_limit(1 << 30)
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            elements = [e.strip().strip("'\"") for e in row["Elements"].strip("[]").split(",")]
            pos = _floats(row["XYZ_Ang"]).reshape(-1, 3)
            if len(elements) != pos.shape[0] or len(elements) != int(row["N_atoms"]):
                raise ValueError(f"{path}: molecule {row['Index']} has {len(elements)} "
                                 f"elements, {pos.shape[0]} positions, N_atoms {row['N_atoms']}")
            out.append({"index": int(row["Index"]), "elements": elements, "pos": pos,
                        "smiles": row["SMILES"],
                        "properties": {c: float(row[c]) for c, _, _ in TARGETS.values()}})
    return out


def _xyz_float(text: str) -> float:
    return float(text.replace("*^", "e"))  # Mathematica exponents in the release


def read_xyz(path: str) -> Dict:
    """One original release file (``dsgdb9nsd_XXXXXX.xyz``) as :func:`read_csv`'s rows.
    Its SMILES line holds the GDB-17 and the relaxed geometry's SMILES: the latter is
    kept (it describes these coordinates)."""
    with open(path) as f:
        lines = f.read().splitlines()
    n = int(lines[0])
    head = lines[1].split()
    if len(head) != 2 + len(_XYZ_PROPERTIES) or head[0] != "gdb":
        raise ValueError(f"{path}: line 2 is not a QM9 property line")
    props = dict(zip(_XYZ_PROPERTIES, map(_xyz_float, head[2:])))
    atoms = [line.split() for line in lines[2:2 + n]]
    smiles = lines[3 + n].split()
    return {"index": int(head[1]), "elements": [a[0] for a in atoms],
            "pos": np.array([[_xyz_float(v) for v in a[1:4]] for a in atoms]),
            "smiles": smiles[-1],
            "properties": {c: props[c] for c, _, _ in TARGETS.values()}}


def read_source(source: str) -> List[Dict]:
    """Every molecule of ``source``, sorted by QM9 index."""
    rows = []
    for path in source_files(source):
        rows += read_csv(path) if path.endswith(".csv") else [read_xyz(path)]
    rows.sort(key=lambda r: r["index"])
    indices = [r["index"] for r in rows]
    if len(set(indices)) != len(indices):
        raise ValueError(f"{source!r} holds some QM9 index twice")
    return rows


# --------------------------------------------------------------------------- bonds

@contextlib.contextmanager
def _quiet_native_output(active: bool = True):
    """Silence what native code writes to the process's stdout/stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def perceive_bonds(elements: Sequence[str], pos: np.ndarray, smiles: Optional[str] = None
                   ) -> Tuple[np.ndarray, np.ndarray, int]:
    """Bonds of a neutral molecule from its coordinates (see the module docstring).

    Returns ``(pairs [B, 2] with i < j, types [B] into BOND_TYPES, source)`` with
    ``source`` an index into :data:`BOND_SOURCES`.
    """
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    block = f"{len(elements)}\n\n" + "\n".join(
        f"{e} {x:.10f} {y:.10f} {z:.10f}" for e, (x, y, z) in zip(elements, pos))
    atoms = Chem.MolFromXYZBlock(block)
    if atoms is None:
        raise ValueError(f"RDKit cannot read the atoms {list(elements)}")
    mol, connectivity = None, None
    for source, hueckel in ((0, False), (1, True)):
        candidate = Chem.Mol(atoms)
        try:
            with _quiet_native_output(hueckel):  # YAeHMOP prints distance warnings
                rdDetermineBonds.DetermineConnectivity(candidate, useHueckel=hueckel)
            connectivity = Chem.Mol(candidate)
            rdDetermineBonds.DetermineBondOrders(candidate, charge=0)
            Chem.SanitizeMol(candidate)
            mol = candidate
            break
        except Exception:  # noqa: BLE001 - RDKit raises plain exceptions of several kinds
            continue
    if mol is None:
        source = 2
        try:
            template = Chem.AddHs(Chem.MolFromSmiles(smiles))
            mol = AllChem.AssignBondOrdersFromTemplate(template, connectivity)
            Chem.SanitizeMol(mol)
        except Exception:  # noqa: BLE001
            source, mol = CONNECTIVITY_ONLY, connectivity
    kinds = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2,
             Chem.BondType.AROMATIC: 3}
    unperceived = BOND_TYPES.index("unperceived")
    pairs, types = [], []
    for bond in (mol.GetBonds() if mol is not None else ()):
        i, j = sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        pairs.append((i, j))
        types.append(unperceived if source == CONNECTIVITY_ONLY
                     else kinds.get(bond.GetBondType(), unperceived))
    return (np.array(pairs, dtype=np.int64).reshape(-1, 2), np.array(types, dtype=np.int64),
            source)


# --------------------------------------------------------------------------- molecules

def molecule(row: Dict) -> Data:
    """A molecule as ``Data``: ``x`` [N, 5] one-hot over :data:`ATOM_TYPES`, ``z``
    atomic numbers, ``pos`` [N, 3] (Å), ``edge_index`` [2, 2B] the bonds both ways,
    ``edge_attr`` [2B, 5] one-hot over :data:`BOND_TYPES`, ``y`` [1, 12] the
    :data:`TARGETS` in their units, ``idx`` the QM9 index, ``bond_source``."""
    unknown = sorted(set(row["elements"]) - set(ATOM_TYPES))
    if unknown:
        raise ValueError(f"molecule {row['index']}: elements {unknown} are not QM9's")
    atom = torch.tensor([ATOM_TYPES.index(e) for e in row["elements"]])
    pairs, types, source = perceive_bonds(row["elements"], row["pos"], row["smiles"])
    edge_index = torch.from_numpy(np.concatenate([pairs, pairs[:, ::-1]]).T.copy())
    bond = torch.from_numpy(np.concatenate([types, types]))
    y = [row["properties"][c] * factor for c, factor, _ in TARGETS.values()]
    return Data(x=torch.nn.functional.one_hot(atom, len(ATOM_TYPES)).float(),
                z=torch.tensor([ATOMIC_NUMBERS[e] for e in row["elements"]]),
                pos=torch.from_numpy(row["pos"]).float(), edge_index=edge_index,
                edge_attr=torch.nn.functional.one_hot(bond, len(BOND_TYPES)).float(),
                y=torch.tensor([y], dtype=torch.float32),
                idx=torch.tensor([row["index"]]), bond_source=torch.tensor([source]))


def default_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "pyg_implicit", "qm9")


def _fingerprint(files: Sequence[str]) -> str:
    """Of the processing (its version, RDKit's, which perceives the bonds) and of the
    files' names and contents."""
    import rdkit

    h = hashlib.sha256(f"v{CACHE_VERSION} rdkit {rdkit.__version__}".encode())
    for path in files:
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


class QM9Molecules(InMemoryDataset):
    r"""QM9 from the installed ``qm9pack`` (default) or a folder ``source`` of its CSV
    files or of the original XYZ files, processed once (bonds perceived, units
    converted) into ``root`` under a name fingerprinted to the source files' contents
    and the RDKit version, so that changed data (or another RDKit) is reprocessed and
    two sources never share a cache.

    Args:
        root (str, optional): the cache folder. (default: ``~/.cache/pyg_implicit/qm9``)
        source (str, optional): folder of ``qm9_part*.csv`` or ``*.xyz``.
            (default: qm9pack's data folder)
        transform, pre_filter: as PyG's.

    Attributes:
        stats (dict): molecules, and how many got their bond orders from the geometry,
            from the SMILES, or kept connectivity only.
        target_names, target_units: of the 12 columns of ``y``.
    """

    target_names = tuple(TARGETS)
    target_units = tuple(u for _, _, u in TARGETS.values())

    def __init__(self, root: Optional[str] = None, source: Optional[str] = None,
                 transform=None, force_reload: bool = False):
        self.source = os.path.abspath(source or qm9pack_folder())
        self.files = source_files(self.source)
        self.fingerprint = _fingerprint(self.files)
        super().__init__(root or default_root(), transform, force_reload=force_reload)
        self.load(self.processed_paths[0])
        with open(self.processed_paths[1]) as f:
            self.stats = json.load(f)

    @property
    def raw_file_names(self) -> List[str]:
        return []

    @property
    def processed_file_names(self) -> List[str]:
        return [f"qm9_{self.fingerprint}.pt", f"qm9_{self.fingerprint}.json"]

    def download(self) -> None:  # the source is local: nothing to fetch
        pass

    def process(self) -> None:
        from tqdm import tqdm

        rows = read_source(self.source)
        data_list = [molecule(r) for r in tqdm(rows, desc="QM9: perceiving bonds",
                                                disable=len(rows) < 1000, mininterval=5)]
        sources = torch.cat([d.bond_source for d in data_list]) if data_list else torch.zeros(0)
        stats = {"molecules": len(data_list), "source": self.source,
                 "files": [os.path.basename(p) for p in self.files],
                 "bond_source": {name: int((sources == i).sum())
                                 for i, name in enumerate(BOND_SOURCES)},
                 "connectivity_only_indices": [int(d.idx) for d in data_list
                                               if int(d.bond_source) == CONNECTIVITY_ONLY]}
        self.save(data_list, self.processed_paths[0])
        # written last: PyG reprocesses unless both files exist, so a cut-off run never
        # leaves a half-written cache that loads
        write_json(stats, self.processed_paths[1])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({len(self)}, source={self.source!r})"


def cormorant_split(num_molecules: int, proportional: bool = False
                    ) -> Dict[str, np.ndarray]:
    """Positions (in index order) of the train/validation/test molecules.

    For the full 130,831 molecules: Cormorant's split (``numpy.random.seed(0)``,
    100,000 / 17,748 / 13,083). With ``proportional`` (small fixtures and subsets) the
    same permutation rule with ``round(100000/130831 * n)`` training molecules and 10%
    test; otherwise any other count is an error.
    """
    if num_molecules != NUM_MOLECULES and not proportional:
        raise ValueError(f"the Cormorant split needs the {NUM_MOLECULES} characterised "
                         f"molecules, got {num_molecules}")
    n_train = 100_000 if num_molecules == NUM_MOLECULES else round(
        100_000 / NUM_MOLECULES * num_molecules)
    n_test = int(0.1 * num_molecules)
    n_val = num_molecules - n_train - n_test
    if min(n_train, n_val, n_test) < 1:
        raise ValueError(f"{num_molecules} molecules are too few for a train/val/test split")
    perm = np.random.RandomState(0).permutation(num_molecules)
    train, val, test = np.split(perm, [n_train, n_train + n_val])
    return {"train": train, "val": val, "test": test}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyg_implicit.experiments.qm9.data",
                                description="Process QM9 once and print its counts.")
    p.add_argument("--source", default=None, help="folder of qm9_part*.csv or *.xyz "
                   "(default: the installed qm9pack)")
    p.add_argument("--root", default=None, help=f"cache folder (default {default_root()})")
    args = p.parse_args(argv)
    dataset = QM9Molecules(args.root, args.source)
    stats = {k: v for k, v in dataset.stats.items() if k != "connectivity_only_indices"}
    print(json.dumps({"dataset": repr(dataset), **stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
