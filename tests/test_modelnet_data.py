"""ModelNet data: the local-folder loader and its cache, point sampling, rotations and
the synthetic meshes. The OFF fixtures are generated here (no ModelNet on the machine)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import torch_geometric.datasets.modelnet
from pyg_implicit.experiments.modelnet import data as mn
from pyg_implicit.experiments.runs import repo_root

FIXTURE_SHAPES = ("box", "cone", "cylinder", "torus")
TRAIN, TEST = 3, 2


@pytest.fixture(scope="module")
def modelnet_dir(tmp_path_factory):
    """A small folder in ModelNet's layout, meshes in random orientations."""
    out = str(tmp_path_factory.mktemp("modelnet") / "ModelNetFake")
    mn.write_synthetic_modelnet(out, TRAIN, TEST, rotation="so3", shapes=FIXTURE_SHAPES, seed=1)
    return out


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Any download attempt fails the test; the default cache lives in ``tmp_path``."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")
    monkeypatch.setattr(torch_geometric.datasets.modelnet, "download_url", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "ModelNetCopy")


def count_processing(monkeypatch):
    calls = []
    original = mn.ModelNetFolder.process_set
    monkeypatch.setattr(mn.ModelNetFolder, "process_set",
                        lambda self, split: calls.append(split) or original(self, split))
    return calls


# --------------------------------------------------------------------------- loader

@pytest.mark.parametrize("train", [True, False])
def test_loader_items(modelnet_dir, tmp_path, train):
    ds = mn.ModelNetFolder(modelnet_dir, train=train, cache_dir=str(tmp_path / "cache"))
    per_class = TRAIN if train else TEST
    assert ds.classes == FIXTURE_SHAPES and ds.synthetic
    assert len(ds) == len(FIXTURE_SHAPES) * per_class and ds.skipped == {}
    assert "ModelNetFake" in repr(ds) and "synthetic" in repr(ds)
    labels = [int(d.y) for d in ds]
    assert labels == [i for i in range(len(FIXTURE_SHAPES)) for _ in range(per_class)]
    for rel, d in zip(ds.files, ds):
        assert FIXTURE_SHAPES[int(d.y)] == rel.split(os.sep)[0]
        assert rel.split(os.sep)[1] == ("train" if train else "test")
        assert d.y.dtype == torch.long and d.y.shape == (1,)
        assert d.pos.dtype == torch.float32 and d.pos.dim() == 2 and d.pos.size(1) == 3
        assert d.face.dtype == torch.long and d.face.size(0) == 3 and d.face.size(1) > 0
        radius = d.pos.double().norm(dim=1)
        assert radius.max() == pytest.approx(1.0, abs=1e-6)
        a, b, c = (d.pos.double()[d.face[i]] for i in range(3))
        area = torch.linalg.cross(b - a, c - a).norm(dim=1)
        centroid = (area[:, None] * (a + b + c) / 3).sum(0) / area.sum()
        assert centroid.abs().max() < 1e-6


def test_files_read_in_sorted_order(modelnet_dir, tmp_path, monkeypatch):
    reference = mn.ModelNetFolder(modelnet_dir, cache_dir=str(tmp_path / "a"))
    assert reference.files == sorted(reference.files)
    listing = mn.glob.glob
    monkeypatch.setattr(mn.glob, "glob", lambda pattern: listing(pattern)[::-1])
    shuffled = mn.ModelNetFolder(modelnet_dir, cache_dir=str(tmp_path / "b"))
    assert shuffled.files == reference.files
    for rel, d, e in zip(reference.files, reference, shuffled):
        assert torch.equal(d.pos, e.pos) and torch.equal(d.face, e.face)
        assert d.pos.size(0) == mn.read_mesh(os.path.join(modelnet_dir, rel)).pos.size(0)


def test_cache_reused_and_refreshed(modelnet_dir, tmp_path, monkeypatch):
    folder = copy_of(modelnet_dir, tmp_path)
    calls = count_processing(monkeypatch)
    first = mn.ModelNetFolder(folder)
    assert calls == ["train", "test"]
    assert first.processed_dir == mn.default_cache_dir(str(folder))
    assert first.processed_dir.startswith(str(tmp_path / "home" / ".cache" / "pyg_implicit"))
    assert os.path.basename(first.processed_dir).startswith("ModelNetCopy-")
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        first.download()
    second = mn.ModelNetFolder(folder, train=False)
    assert calls == ["train", "test"] and len(second) == len(FIXTURE_SHAPES) * TEST
    shutil.copy(folder / "cone/train/cone_0001.off", folder / "cone/train/cone_0099.off")
    third = mn.ModelNetFolder(folder)
    assert calls == ["train", "test"] * 2
    assert len(third) == len(first) + 1 and "cone/train/cone_0099.off" in third.files


def test_interrupted_processing_is_redone(modelnet_dir, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    mn.ModelNetFolder(modelnet_dir, cache_dir=cache)
    os.remove(os.path.join(cache, mn.MANIFEST))  # what a run killed mid-processing leaves
    calls = count_processing(monkeypatch)
    mn.ModelNetFolder(modelnet_dir, cache_dir=cache)
    assert calls == ["train", "test"]


def test_missing_canonical_classes(modelnet_dir, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        mn.ModelNetFolder(modelnet_dir, classes=10, cache_dir=str(tmp_path / "cache"))
    message = str(err.value)
    assert all(c in message for c in mn.MODELNET10_CLASSES)
    assert modelnet_dir in message and "cannot be downloaded" in message


def test_missing_folder(tmp_path):
    missing = str(tmp_path / "ModelNet40")
    with pytest.raises(FileNotFoundError) as err:
        mn.ModelNetFolder(missing, classes=40)
    assert missing in str(err.value)
    assert "<class>/{train,test}/<class>_XXXX.off" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        mn.ModelNetFolder(str(empty))


def test_unsampleable_meshes_skipped_and_counted(modelnet_dir, tmp_path):
    folder = copy_of(modelnet_dir, tmp_path)
    flat = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0.0]])  # collinear: zero area
    mn.write_off(str(folder / "box/train/box_0050.off"), flat, np.array([[0, 1, 2], [1, 2, 3]]))
    (folder / "torus/train/torus_0050.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    for _ in range(2):  # processed, then served from the cache: warned both times
        with pytest.warns(UserWarning, match="2 of 14 train meshes cannot be sampled") as record:
            ds = mn.ModelNetFolder(str(folder), cache_dir=str(tmp_path / "cache"))
        message = str(record[0].message)
        assert "box_0050.off" in message and "torus_0050.off" in message
        assert ds.skipped == {"box/train/box_0050.off": "zero total face area",
                              "torus/train/torus_0050.off": "no faces"}
        assert len(ds) == len(FIXTURE_SHAPES) * TRAIN


def test_broken_header_read(modelnet_dir, tmp_path):
    folder = copy_of(modelnet_dir, tmp_path)
    octahedron = ["1 0 0", "-1 0 0", "0 1 0", "0 -1 0", "0 0 1", "0 0 -1"]
    faces = ["3 0 2 4", "3 2 1 4", "3 1 3 4", "3 3 0 4", "3 2 0 5", "3 1 2 5", "3 3 1 5", "3 0 3 5"]
    lines = ["OFF6 8 0", *octahedron, *faces]  # ModelNet's header bug: no newline after OFF
    (folder / "cone/test/cone_0050.off").write_text("\n".join(lines) + "\n")
    ds = mn.ModelNetFolder(str(folder), train=False, cache_dir=str(tmp_path / "cache"))
    d = ds[ds.files.index("cone/test/cone_0050.off")]
    assert d.pos.shape == (6, 3) and d.face.shape == (3, 8)
    assert torch.allclose(d.pos.norm(dim=1), torch.ones(6))


def test_read_mesh_quirks(tmp_path):
    """CRLF, a comment, a pentagon, a quad with a colour, and no final newline."""
    path = tmp_path / "quirks.off"
    square = ["0 0 0", "1 0 0", "1 1 0", "0 1 0", "0.5 1.5 0"]
    path.write_bytes("\r\n".join(["OFF", "# comment", "5 2 0", *square, "5 0 1 2 4 3",
                                  "4 0 1 2 3 255 0 0"]).encode())
    face = mn.read_mesh(str(path)).face
    assert face.t().tolist() == [[0, 1, 2], [0, 2, 4], [0, 4, 3], [0, 1, 2], [0, 2, 3]]
    (tmp_path / "bad.off").write_text("ply\n")
    with pytest.raises(ValueError, match="not an OFF file"):
        mn.read_mesh(str(tmp_path / "bad.off"))


# --------------------------------------------------------------------------- sampling

def test_sample_points_on_box_faces(modelnet_dir, tmp_path):
    ds = mn.ModelNetFolder(modelnet_dir, cache_dir=str(tmp_path / "cache"))
    box = ds[0]
    assert ds.files[0].startswith("box")
    pos, face = box.pos.double(), box.face
    torch.manual_seed(0)
    sampled = mn.sample_points(500)(box)
    assert sampled.face is None
    assert sampled.pos.shape == (500, 3) and sampled.normal.shape == (500, 3)
    assert sampled.pos.dtype == torch.float32 and sampled.normal.dtype == torch.float32
    assert torch.allclose(sampled.normal.norm(dim=1), torch.ones(500), atol=1e-6)
    a, b, c = (pos[face[i]] for i in range(3))  # [F, 3]
    normal = torch.nn.functional.normalize(torch.linalg.cross(b - a, c - a), dim=1)
    outward = ((a + b + c) / 3 * normal).sum(1) > 0  # convex, centred at the origin
    assert outward.all()
    p, n = sampled.pos.double(), sampled.normal.double()
    on_plane = ((p[:, None] - a[None]) * normal[None]).sum(-1).abs() < 1e-5  # [N, F]
    same_normal = (n[:, None] * normal[None]).sum(-1) > 1 - 1e-5
    # inside the triangle: on the inner side of its three edges
    def inner_side(v, w):
        return (torch.linalg.cross((w - v).expand(len(p), -1, -1), p[:, None] - v, dim=-1)
                * normal).sum(-1) > -1e-6
    inside = inner_side(a, b) & inner_side(b, c) & inner_side(c, a)
    assert (on_plane & same_normal & inside).any(dim=1).all()


# --------------------------------------------------------------------------- meshes

def mesh_checks(vertices, faces):
    assert vertices.dtype == np.float64 and faces.dtype == np.int64
    assert np.isfinite(vertices).all() and len(np.unique(vertices, axis=0)) == len(vertices)
    assert set(faces.ravel()) == set(range(len(vertices)))
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = set(map(tuple, directed.tolist()))
    assert len(edges) == len(directed), "a directed edge appears twice: inconsistent winding"
    assert all((b, a) in edges for a, b in edges), "an edge has one face: not closed"
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    areas = np.linalg.norm(np.cross(b - a, c - a), axis=1) / 2
    assert areas.min() > 1e-6 * areas.sum()
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    assert volume > 0, "faces point inward"
    return vertices.max(0) - vertices.min(0)


@pytest.mark.parametrize("shape", mn.SHAPES)
def test_make_mesh(shape):
    extents = []
    for seed in range(12):
        vertices, faces = mn.make_mesh(shape, np.random.default_rng(seed))
        extents.append(mesh_checks(vertices, faces))
        assert np.allclose(vertices[:, :2].mean(0), 0)
        assert np.isclose(vertices[:, 2].max(), -vertices[:, 2].min())
        if shape in ("capsule", "cone", "cylinder", "torus"):  # upright: z is an axis of inertia
            assert abs((vertices[:, 0] * vertices[:, 2]).mean()) < 1e-9
            assert abs((vertices[:, 1] * vertices[:, 2]).mean()) < 1e-9
    extents = np.array(extents)
    aspect = extents[:, 2] / extents[:, 0]
    assert aspect.max() / aspect.min() > 1.5, f"{shape}: proportions hardly vary"
    assert len(np.unique(extents.round(6), axis=0)) == len(extents)
    with pytest.raises(ValueError, match="shape must be one of"):
        mn.make_mesh("sphere", np.random.default_rng(0))


# --------------------------------------------------------------------------- rotations

@pytest.mark.parametrize("kind", mn.ROTATIONS)
def test_random_rotations(kind):
    rot = mn.random_rotations(2000, kind, torch.Generator().manual_seed(0))
    assert rot.shape == (2000, 3, 3) and rot.dtype == torch.float64
    assert (rot @ rot.transpose(1, 2) - torch.eye(3)).abs().max() < 1e-12
    det = torch.linalg.det(rot)
    if kind == "o3":
        assert torch.allclose(det.abs(), torch.ones(2000).double())
        assert 800 < int((det < 0).sum()) < 1200
    else:
        assert torch.allclose(det, torch.ones(2000).double())
    if kind == "none":
        assert torch.equal(rot, torch.eye(3).expand(2000, 3, 3).double())
    if kind == "z":
        assert torch.allclose(rot[:, :, 2], torch.tensor([0, 0, 1.0]).double())
        assert rot[:, 0, 0].min() < -0.99 and rot[:, 0, 0].max() > 0.99
    if kind in ("so3", "o3"):
        assert rot.mean(0).abs().max() < 0.1
        # Haar: the image of a fixed axis is uniform on the sphere, e.g. its z
        # component uniform on [-1, 1] (variance 1/3), not concentrated on the poles
        assert abs(rot[:, 2, 2].var().item() - 1 / 3) < 0.05
    again = mn.random_rotations(2000, kind, torch.Generator().manual_seed(0), dtype=torch.float32)
    assert again.dtype == torch.float32 and torch.allclose(again.double(), rot, atol=1e-6)


def test_bad_rotation_kind():
    with pytest.raises(ValueError, match=r"kind must be one of .*'so3'.*'spin'"):
        mn.random_rotations(3, "spin")
    with pytest.raises(ValueError, match="kind must be one of"):
        mn.RandomRotate("SO3")


@pytest.mark.parametrize("kind", ["z", "so3", "o3"])
def test_random_rotate_transform(kind):
    pos = torch.randn(50, 3)
    normal = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    data = mn.Data(pos=pos, normal=normal)
    out = mn.RandomRotate(kind, torch.Generator().manual_seed(3))(data)
    assert data.pos is pos and data.normal is normal  # the input is not modified
    assert out.pos.dtype == torch.float32 and out.normal.dtype == torch.float32
    rot = torch.linalg.lstsq(pos.double(), out.pos.double()).solution.T  # out.pos = pos R^T
    assert (rot @ rot.T - torch.eye(3)).abs().max() < 1e-5
    assert not torch.allclose(rot, torch.eye(3).double(), atol=1e-3)
    assert torch.allclose(out.normal.double(), normal.double() @ rot.T, atol=1e-5)


# --------------------------------------------------------------------------- synthetic set

def test_write_synthetic_layout_and_record(modelnet_dir):
    for shape in FIXTURE_SHAPES:
        numbered = [f"{shape}_{i:04d}.off" for i in range(1, TRAIN + TEST + 1)]
        assert sorted(os.listdir(os.path.join(modelnet_dir, shape, "train"))) == numbered[:TRAIN]
        assert sorted(os.listdir(os.path.join(modelnet_dir, shape, "test"))) == numbered[TRAIN:]
    with open(os.path.join(modelnet_dir, "SYNTHETIC.json")) as f:
        record = json.load(f)
    assert record["synthetic"] is True and record["files"] == len(FIXTURE_SHAPES) * (TRAIN + TEST)
    assert record["arguments"] == {"train_per_class": TRAIN, "test_per_class": TEST,
                                   "rotation": "so3", "shapes": list(FIXTURE_SHAPES), "seed": 1}
    assert record["counts"]["torus"] == {"train": TRAIN, "test": TEST}
    assert sorted(os.listdir(os.path.dirname(modelnet_dir))) == ["ModelNetFake"]  # no leftovers


def read_tree(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


def test_write_synthetic_deterministic_and_refuses_non_empty(tmp_path):
    args = dict(train_per_class=2, test_per_class=1, shapes=("capsule", "pyramid"))
    def write(name, seed):
        mn.write_synthetic_modelnet(str(tmp_path / name), **args, seed=seed)
        return read_tree(tmp_path / name)
    a, b, c = write("a", 5), write("b", 5), write("c", 6)
    assert a == b and len(a) == 2 * 3 + 1
    first = "capsule/train/capsule_0001.off"
    assert a.keys() == c.keys() and a[first] != c[first]
    (tmp_path / "empty").mkdir()
    mn.write_synthetic_modelnet(str(tmp_path / "empty"), **args)  # an empty folder is fine
    with pytest.raises(FileExistsError, match="is not empty"):
        mn.write_synthetic_modelnet(str(tmp_path / "a"), **args)
    assert read_tree(tmp_path / "a") == a


def test_synthetic_rotations(tmp_path):
    """``z`` turns the upright meshes about z (the z coordinates of ``none`` stay),
    and reflections (``o3``) keep the faces outward."""
    meshes = {}
    for rotation in ("none", "z", "o3"):
        out = tmp_path / rotation
        mn.write_synthetic_modelnet(str(out), 2, 0, rotation=rotation, shapes=("cone", "pyramid"))
        meshes[rotation] = {rel: mn.read_mesh(str(out / rel)) for rel in read_tree(out)
                            if rel.endswith(".off")}
    for rel, upright in meshes["none"].items():
        turned = meshes["z"][rel]
        assert torch.allclose(upright.pos[:, 2], turned.pos[:, 2], atol=1e-6)
        assert not torch.allclose(upright.pos[:, :2], turned.pos[:, :2], atol=1e-3)
        radius = upright.pos[:, :2].norm(dim=1)
        assert torch.allclose(radius, turned.pos[:, :2].norm(dim=1), atol=1e-5)
    for d in meshes["o3"].values():
        mesh_checks(d.pos.double().numpy(), d.face.t().contiguous().numpy())


def test_cli(tmp_path, capsys):
    out = tmp_path / "synthetic"
    command = [sys.executable, "-m", "pyg_implicit.experiments.modelnet.data", "synthetic",
               "--out", str(out), "--train-per-class", "2", "--test-per-class", "1",
               "--rotation", "so3", "--seed", "3"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": repo_root()})
    assert done.returncode == 0, done.stderr
    assert f"wrote {3 * len(mn.SHAPES)} synthetic meshes to {out}" in done.stdout
    expected = {f"{s}/{split}/{s}_{i:04d}.off" for s in mn.SHAPES
                for split, i in (("train", 1), ("train", 2), ("test", 3))}
    assert read_tree(out).keys() == expected | {"SYNTHETIC.json"}
    with pytest.raises(SystemExit) as refused:  # the same parser, in this process
        mn.main(["synthetic", "--out", str(out)])
    assert refused.value.code != 0 and "is not empty" in capsys.readouterr().err
