r"""ModelNet10/40 meshes from a local folder, point sampling, random rotations, and a
synthetic stand-in with the same layout.

ModelNet (Wu et al., "3D ShapeNets", CVPR 2015) is read from the unzipped archive in
its own layout, ``DIR/<class>/{train,test}/<class>_XXXX.off``; it is never
downloaded (the machines that train have no internet). :class:`ModelNetFolder`
processes the meshes once into a cache tied to the folder's file list, and
:func:`sample_points` turns a mesh into a point cloud with normals at every access.

Normalisation (the ``pre_transform``)
    :class:`NormalizeUnitBall`: centre at the area-weighted surface centroid and scale
    so that the farthest vertex lies at distance 1. PyG's ``NormalizeScale`` instead
    centres at the vertex mean (which depends on the tessellation) and divides by the
    largest absolute *coordinate*, which puts the mesh in the cube ``[-1, 1]^3`` with a
    scale that changes when the mesh is rotated; both choices here are
    rotation-equivariant, so a rotated file gives a rotated, equally scaled cloud.

Synthetic stand-in
    :func:`write_synthetic_modelnet` writes procedural meshes of :data:`SHAPES` in the
    ModelNet layout, plus ``SYNTHETIC.json`` saying so; it is what runs when ModelNet is
    not on the machine, and results on it are not ModelNet results.

Command line::

    python -m pyg_implicit.experiments.modelnet.data synthetic --out DIR \
        [--train-per-class 200] [--test-per-class 50] [--rotation z|so3|none|o3] [--seed 0]
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.datasets import ModelNet
from torch_geometric.io.off import parse_off
from torch_geometric.transforms import BaseTransform, SamplePoints

from pyg_implicit.experiments.runs import write_json

MODELNET10_CLASSES = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand",
                      "sofa", "table", "toilet")
MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair",
    "cone", "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar",
    "keyboard", "lamp", "laptop", "mantel", "monitor", "night_stand", "person", "piano",
    "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table", "tent",
    "toilet", "tv_stand", "vase", "wardrobe", "xbox")
SPLITS = ("train", "test")
ROTATIONS = ("none", "z", "so3", "o3")
SHAPES = ("box", "capsule", "cone", "cylinder", "ellipsoid", "pyramid", "torus")
SYNTHETIC_MARKER = "SYNTHETIC.json"
MANIFEST = "manifest.json"
# bump when processing changes: caches written by older code are then reprocessed
CACHE_VERSION = 1


# --------------------------------------------------------------------------- reading

def read_mesh(path: str) -> Data:
    """An OFF file as ``Data(pos [V, 3] float32, face [3, F] int64)``, through PyG's
    OFF parser (which handles ModelNet's run-together headers, ``OFF490 518 0``) on
    cleaned lines: ``torch_geometric.io.read_off`` itself drops the last line of a file
    without a final newline, fails on a header line with trailing blanks (``"OFF "``)
    or on comments and blank lines, keeps colour values as vertex indices, and silently
    drops faces of more than four corners (fanned into triangles here)."""
    with open(path) as f:
        lines = [s for s in map(str.strip, f.read().splitlines()) if s and not s.startswith("#")]
    if not lines or not lines[0].startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file (no OFF header)")
    counts, body = (lines[1], lines[2:]) if lines[0] == "OFF" else (lines[0][3:], lines[1:])
    num_vertices, num_faces = (int(t) for t in counts.split()[:2])
    if len(body) < num_vertices + num_faces:
        raise ValueError(f"{path}: truncated, the header announces {num_vertices} vertices "
                         f"and {num_faces} faces, the file has {len(body)} lines for them")
    triangles = []
    for line in body[num_vertices:num_vertices + num_faces]:
        corners = line.split()
        corners = corners[1:1 + int(corners[0])]  # drops colours after the indices
        triangles += [f"3 {corners[0]} {corners[k]} {corners[k + 1]}"
                      for k in range(1, len(corners) - 1)]
    return parse_off(["OFF", f"{num_vertices} {len(triangles)}", *body[:num_vertices],
                      *triangles])


def _face_areas(pos: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    a, b, c = (pos[face[i]] for i in range(3))
    return torch.linalg.cross(b - a, c - a).norm(dim=1) / 2


def unsampleable(data: Data) -> Optional[str]:
    """Why ``SamplePoints`` cannot sample this mesh (it would divide by a zero total
    area or index out of range), or ``None``."""
    pos, face = data.pos, data.face
    if face is None or face.dim() != 2 or face.size(1) == 0:
        return "no faces"
    if int(face.min()) < 0 or int(face.max()) >= pos.size(0):
        return "face index out of range"
    if not torch.isfinite(pos).all():
        return "non-finite vertex"
    extent = float(pos.abs().max())
    if extent == 0 or not float(_face_areas(pos.double() / extent, face).sum()) > 1e-12:
        return "zero total face area"
    return None


class NormalizeUnitBall(BaseTransform):
    """Centre a mesh at its area-weighted surface centroid (the mean of uniformly
    sampled surface points, independent of the tessellation) and scale it so that the
    farthest vertex is at distance 1: the surface lies in the unit ball, and a rotated
    mesh is normalised to the rotated result (PyG's ``NormalizeScale`` is neither)."""

    def forward(self, data: Data) -> Data:
        pos = data.pos.double()
        area = _face_areas(pos, data.face)
        centroid = (area[:, None] * pos[data.face].mean(dim=0)).sum(0) / area.sum()
        pos = pos - centroid
        data.pos = (pos / pos.norm(dim=1).max()).to(data.pos.dtype)
        return data


# --------------------------------------------------------------------------- dataset

def _layout_error(data_dir: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"ModelNet folder {data_dir}: {problem}. Expected the layout of the unzipped "
        f"ModelNet10/ModelNet40 archive, {data_dir}/<class>/{{train,test}}/<class>_XXXX.off. "
        f"The data cannot be downloaded here: copy the unzipped folder onto this machine, "
        f"or write the synthetic stand-in with `python -m "
        f"pyg_implicit.experiments.modelnet.data synthetic --out DIR`.")


def _class_list(data_dir: str, classes) -> Tuple[str, ...]:
    """The sorted class folders to read: ModelNet10's or ModelNet40's (all required), or
    (``classes=None``) every folder holding ``train/`` and ``test/``."""
    if classes not in (None, 10, 40):
        raise ValueError(f"classes must be 10, 40 or None, got {classes!r}")
    if not os.path.isdir(data_dir):
        raise _layout_error(data_dir, "no such folder")

    def is_class(name):
        return all(os.path.isdir(os.path.join(data_dir, name, s)) for s in SPLITS)
    if classes is None:
        found = tuple(sorted(c for c in os.listdir(data_dir)
                             if not c.startswith(".") and is_class(c)))
        if not found:
            raise _layout_error(data_dir, "no class folders with train/ and test/ inside")
        return found
    wanted = MODELNET10_CLASSES if classes == 10 else MODELNET40_CLASSES
    missing = [c for c in wanted if not is_class(c)]
    if missing:
        raise _layout_error(data_dir, f"{len(missing)} of the {classes} ModelNet{classes} class "
                                      f"folders are missing or lack train/ and test/: "
                                      f"{', '.join(missing)}")
    return wanted


def default_cache_dir(data_dir: str) -> str:
    """``~/.cache/pyg_implicit/modelnet/<folder name>-<hash of its absolute path>``."""
    data_dir = os.path.abspath(data_dir)
    digest = hashlib.sha1(data_dir.encode()).hexdigest()[:10]
    return os.path.join(os.path.expanduser("~"), ".cache", "pyg_implicit", "modelnet",
                        f"{os.path.basename(data_dir)}-{digest}")


class ModelNetFolder(ModelNet):
    r"""ModelNet read from a local folder in the dataset's own layout, never downloaded.

    Each item is a mesh ``Data(pos [V, 3] float32, face [3, F] int64, y [1] int64)``,
    normalised by :class:`NormalizeUnitBall`; ``y`` is the index of the class in the
    sorted class list. Use ``transform=sample_points(n)`` for point clouds.

    Args:
        data_dir: the unzipped ``ModelNet10``/``ModelNet40`` folder,
            ``data_dir/<class>/{train,test}/<class>_XXXX.off``.
        classes: ``10`` or ``40`` (all of that list's class folders must be present; a
            ModelNet40 folder read with ``10`` gives ModelNet10's classes), or ``None``:
            the class folders found (synthetic data).
        train: the training split, else the test split.
        cache_dir: where the processed meshes go (:func:`default_cache_dir`). The cache
            records a fingerprint of the files read (relative paths and sizes) and of
            the class list; a folder that changed is reprocessed.
        transform: applied at every access.

    Meshes that cannot be sampled (:func:`unsampleable`) are left out with a warning
    and listed in :attr:`skipped` (``{relative path: reason}``); :attr:`files` names
    the source of each item, in order; :attr:`synthetic` says whether the folder was
    written by :func:`write_synthetic_modelnet`.
    """

    def __init__(self, data_dir: str, classes: Optional[int] = None, train: bool = True,
                 cache_dir: Optional[str] = None, transform=None):
        self.data_dir = os.path.abspath(os.path.expanduser(data_dir))
        self.classes = _class_list(self.data_dir, classes)
        self.name = None if classes is None else str(classes)
        self.split = "train" if train else "test"
        self.cache_dir = os.path.abspath(os.path.expanduser(cache_dir or
                                                            default_cache_dir(self.data_dir)))
        self.synthetic = os.path.isfile(os.path.join(self.data_dir, SYNTHETIC_MARKER))
        pre_transform = NormalizeUnitBall()
        manifest = self._read_manifest()
        stale = (manifest or {}).get("fingerprint") != self._fingerprint(pre_transform)
        self._processed: Dict[str, Tuple[List[str], Dict[str, str]]] = {}  # by process_set
        super(ModelNet, self).__init__(self.cache_dir, transform, pre_transform,
                                       force_reload=stale)
        self.load(self.processed_paths[SPLITS.index(self.split)])
        manifest = self._read_manifest()
        self.files: List[str] = manifest["files"][self.split]
        self.skipped: Dict[str, str] = manifest["skipped"][self.split]
        if self.skipped:
            shown = ", ".join(f"{p} ({why})" for p, why in list(self.skipped.items())[:20])
            warnings.warn(f"ModelNetFolder {self.data_dir}: {len(self.skipped)} of "
                          f"{len(self.skipped) + len(self.files)} {self.split} meshes cannot "
                          f"be sampled and are left out: {shown}"
                          + (" ..." if len(self.skipped) > 20 else "")
                          + " (all in .skipped)", stacklevel=2)

    @property
    def raw_dir(self) -> str:
        return self.data_dir

    @property
    def raw_file_names(self) -> List[str]:
        return list(self.classes)

    @property
    def processed_dir(self) -> str:
        return self.cache_dir

    def download(self) -> None:
        raise _layout_error(self.data_dir, "files missing")

    def mesh_files(self, split: str) -> List[str]:
        """Relative paths of the split's meshes, by class, sorted (PyG's glob order
        depends on the file system)."""
        return [os.path.relpath(p, self.data_dir) for c in map(glob.escape, self.classes)
                for p in sorted(glob.glob(os.path.join(glob.escape(self.data_dir), c, split,
                                                       f"{c}_*.off")))]

    def _fingerprint(self, pre_transform) -> str:
        files = {s: [(p, os.path.getsize(os.path.join(self.data_dir, p)))
                     for p in self.mesh_files(s)] for s in SPLITS}
        key = {"version": CACHE_VERSION, "classes": self.classes, "files": files,
               "pre_transform": repr(pre_transform)}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def _read_manifest(self) -> Optional[Dict]:
        try:
            with open(os.path.join(self.cache_dir, MANIFEST)) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def process(self) -> None:
        """Both splits, each written through a temporary file; the manifest (the
        fingerprint the cache is valid for) is removed first and written last, so an
        interrupted run is reprocessed."""
        manifest_path = os.path.join(self.cache_dir, MANIFEST)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        fingerprint = self._fingerprint(self.pre_transform)
        for split, path in zip(SPLITS, self.processed_paths):
            data_list = self.process_set(split)
            if not data_list:
                raise _layout_error(self.data_dir, f"no readable {split} meshes")
            tmp = f"{path}.{os.getpid()}.tmp"
            self.save(data_list, tmp)
            os.replace(tmp, path)
        write_json({"fingerprint": fingerprint, "data_dir": self.data_dir,
                    "classes": list(self.classes),
                    "files": {s: kept for s, (kept, _) in self._processed.items()},
                    "skipped": {s: skipped for s, (_, skipped) in self._processed.items()}},
                   manifest_path)

    def process_set(self, dataset: str) -> List[Data]:
        kept, skipped, data_list = [], {}, []
        for rel in self.mesh_files(dataset):
            path = os.path.join(self.data_dir, rel)
            try:
                data = read_mesh(path)
            except Exception as e:
                raise ValueError(f"{path}: cannot be read as an OFF mesh: {e}") from e
            reason = unsampleable(data)
            if reason is not None:
                skipped[rel] = reason
                continue
            data.y = torch.tensor([self.classes.index(rel.split(os.sep)[0])])
            data_list.append(self.pre_transform(data))
            kept.append(rel)
        self._processed[dataset] = (kept, skipped)
        return data_list

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({len(self)}, {os.path.basename(self.data_dir)!r}, "
                f"split={self.split!r}, classes={len(self.classes)}"
                + (", synthetic" if self.synthetic else "") + ")")


def sample_points(num_points: int) -> SamplePoints:
    """The per-access transform: ``num_points`` points drawn uniformly on the surface
    (faces by area), ``pos`` [N, 3] and their face's ``normal`` [N, 3] (float32),
    faces removed. PyG normalises the normals to unit length itself; they point outward
    only where the mesh's faces are wound counter-clockwise seen from outside (true of
    the synthetic meshes, not guaranteed of ModelNet's CAD files)."""
    return SamplePoints(num_points, remove_faces=True, include_normals=True)


# --------------------------------------------------------------------------- rotations

def random_rotations(n: int, kind: str, generator: Optional[torch.Generator] = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` random orthogonal matrices [n, 3, 3]: ``"none"`` identity, ``"z"`` uniform
    about the z axis, ``"so3"`` Haar on SO(3) (normalised Gaussian quaternions),
    ``"o3"`` Haar on O(3) (an SO(3) draw times a random sign)."""
    if kind not in ROTATIONS:
        raise ValueError(f"kind must be one of {ROTATIONS}, got {kind!r}")
    f64 = torch.float64
    if kind == "none":
        return torch.eye(3, dtype=dtype).repeat(n, 1, 1)
    if kind == "z":
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=f64)
        c, s, zero = angle.cos(), angle.sin(), torch.zeros(n, dtype=f64)
        rows = [c, -s, zero, s, c, zero, zero, zero, zero + 1]
    else:
        q = torch.randn(n, 4, generator=generator, dtype=f64)
        w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(1)
        rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    rot = torch.stack(rows, dim=1).reshape(n, 3, 3)
    if kind == "o3":
        rot = rot * (1 - 2 * torch.randint(0, 2, (n, 1, 1), generator=generator)).to(f64)
    return rot.to(dtype)


class RandomRotate(BaseTransform):
    """Rotate ``data.pos`` and, if present, ``data.normal`` (``x -> R x``) by one random
    :func:`random_rotations` draw per sample, keeping their dtype. With a ``generator``,
    note that DataLoader workers each get a copy of it and draw the same rotations;
    without one, torch's global generator (seeded per worker) is used."""

    def __init__(self, kind: str, generator: Optional[torch.Generator] = None):
        if kind not in ROTATIONS:
            raise ValueError(f"kind must be one of {ROTATIONS}, got {kind!r}")
        self.kind, self.generator = kind, generator

    def forward(self, data: Data) -> Data:
        rot = random_rotations(1, self.kind, self.generator)[0]
        for key in ("pos", "normal"):
            x = getattr(data, key, None)
            if x is not None:
                data[key] = x @ rot.to(x.dtype).T.to(x.device)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.kind!r})"


# --------------------------------------------------------------------------- synthetic

def _revolve(profile: Sequence[Tuple[float, float]], segments: int, closed: bool = False,
             stretch: Tuple[float, float] = (1.0, 1.0)) -> Tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about z of the profile ``(r, z)``, listed bottom to top (for
    a closed profile, counter-clockwise in the r-z plane) so that the faces face
    outward. An open profile starts and ends on the axis: single pole vertices.
    ``stretch`` scales x and y (an ellipsoid)."""
    r, z = np.asarray(profile, dtype=np.float64).T
    if not closed:
        r, z, poles = r[1:-1], z[1:-1], (z[0], z[-1])
    rings, phi = len(r), 2 * np.pi * np.arange(segments) / segments
    vertices = np.stack([np.outer(r, np.cos(phi)) * stretch[0],
                         np.outer(r, np.sin(phi)) * stretch[1],
                         np.repeat(z[:, None], segments, 1)], -1).reshape(-1, 3)
    k = np.arange(rings if closed else rings - 1)[:, None]
    j = np.arange(segments)[None, :]
    a, b = k * segments + j, k * segments + (j + 1) % segments
    c, d = (k + 1) % rings * segments + (j + 1) % segments, (k + 1) % rings * segments + j
    faces = [np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)]
    if not closed:
        bottom, top, j = rings * segments, rings * segments + 1, np.arange(segments)
        top_ring = (rings - 1) * segments
        vertices = np.vstack([vertices, [0, 0, poles[0]], [0, 0, poles[1]]])
        faces += [np.stack([np.full(segments, bottom), (j + 1) % segments, j], -1),
                  np.stack([np.full(segments, top), top_ring + j,
                            top_ring + (j + 1) % segments], -1)]
    return vertices, np.concatenate(faces).astype(np.int64)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces of a convex mesh wound so that their normals point away from its centre."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    inward = (np.cross(b - a, c - a) * ((a + b + c) / 3 - vertices.mean(0))).sum(1) < 0
    faces = faces.copy()
    faces[inward] = faces[inward][:, ::-1]
    return faces


def _box(sides) -> Tuple[np.ndarray, np.ndarray]:
    vertices = (np.array(list(itertools.product((0, 1), repeat=3))) - 0.5) * np.asarray(sides)
    # corner i = 4x + 2y + z; a side's four corners in index order, then made cyclic
    quads = np.array([[i for i in range(8) if (i >> (2 - axis)) & 1 == side]
                      for axis in range(3) for side in (0, 1)])[:, [0, 1, 3, 2]]
    return vertices, _outward(vertices, np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]))


def make_mesh(shape: str, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A closed triangle mesh of ``shape`` wound counter-clockwise seen from outside:
    vertices float64 [V, 3], faces int64 [F, 3]. Upright (any symmetry axis is the z
    axis), centred (the vertex mean in x and y, the bounding box in z), with random
    proportions (each ratio varies by a factor 2 or more across draws) so that size
    alone does not give the class away."""
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    uniform = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    segments = int(rng.integers(16, 25))
    if shape == "box":
        vertices, faces = _box([uniform(0.4, 1.2) for _ in range(3)])
    elif shape == "pyramid":
        w, d, h = uniform(0.5, 1.2), uniform(0.5, 1.2), uniform(0.5, 1.4)
        vertices = np.array([[-w / 2, -d / 2, -h / 2], [w / 2, -d / 2, -h / 2],
                             [w / 2, d / 2, -h / 2], [-w / 2, d / 2, -h / 2], [0, 0, h / 2]])
        faces = _outward(vertices, np.array([[0, 1, 2], [0, 2, 3], [0, 1, 4], [1, 2, 4],
                                             [2, 3, 4], [3, 0, 4]]))
    elif shape == "cylinder":
        r, h = uniform(0.25, 0.6), uniform(0.5, 1.6)
        vertices, faces = _revolve([(0, -h / 2), (r, -h / 2), (r, h / 2), (0, h / 2)], segments)
    elif shape == "cone":
        r, h = uniform(0.3, 0.7), uniform(0.6, 1.6)
        vertices, faces = _revolve([(0, -h / 2), (r, -h / 2), (0, h / 2)], segments)
    elif shape == "capsule":
        r, length, m = uniform(0.2, 0.45), uniform(0.2, 1.2), segments // 4
        t = np.pi / 2 * np.arange(m + 1) / m
        profile = ([(r * np.cos(a - np.pi / 2), -length / 2 + r * np.sin(a - np.pi / 2)) for a in t]
                   + [(r * np.cos(a), length / 2 + r * np.sin(a)) for a in t])
        vertices, faces = _revolve(profile, segments)
    elif shape == "ellipsoid":
        a, b, c, m = uniform(0.3, 0.8), uniform(0.3, 0.8), uniform(0.3, 0.8), segments // 2
        t = np.pi * np.arange(m + 1) / m
        vertices, faces = _revolve(list(zip(np.sin(t), -c * np.cos(t))), segments, stretch=(a, b))
    else:  # torus
        major = uniform(0.5, 0.8)
        minor, m = major * uniform(0.15, 0.45), segments // 2 + 4
        t = 2 * np.pi * np.arange(m) / m
        vertices, faces = _revolve(list(zip(major + minor * np.cos(t), minor * np.sin(t))),
                                   segments, closed=True)
    return vertices, faces


def write_off(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write a triangle mesh as OFF through a temporary file in the same folder, then
    rename it: a reader never sees a partial mesh."""
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0"]
    lines += [f"{x:.9g} {y:.9g} {z:.9g}" for x, y, z in vertices]
    lines += [f"3 {a} {b} {c}" for a, b, c in faces]
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_synthetic_modelnet(out_dir: str, train_per_class: int, test_per_class: int,
                             rotation: str = "z", shapes: Sequence[str] = SHAPES,
                             seed: int = 0) -> Dict:
    """Write procedural meshes in the ModelNet layout,
    ``out_dir/<shape>/{train,test}/<shape>_XXXX.off`` (numbered from 1, the test files
    continuing after the training files as in ModelNet), each turned by
    ``random_rotations(1, rotation)`` (a reflection also flips the winding, so faces
    stay outward), and ``out_dir/SYNTHETIC.json`` recording that the data is synthetic,
    the arguments and the counts; returns that record. Same seed, same bytes; each
    shape draws from its own stream, so a subset of shapes gives the same meshes.
    The folder is assembled beside ``out_dir`` and renamed into place, so ``out_dir``
    (which must be missing or empty) never holds a partial set."""
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {list(shapes)}")
    if min(train_per_class, test_per_class) < 0:
        raise ValueError("train_per_class and test_per_class must be >= 0")
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        found = ", ".join(sorted(os.listdir(out_dir))[:4])
        raise FileExistsError(f"{out_dir} is not empty ({found}); synthetic data is written "
                              f"only into a new or empty folder")
    shapes = sorted(shapes)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.{os.getpid()}.tmp")
    record = {"synthetic": True,
              "description": "procedural meshes written by pyg_implicit.experiments.modelnet."
                             "data.write_synthetic_modelnet as a stand-in for ModelNet; "
                             "results on them are not ModelNet results",
              "arguments": {"train_per_class": train_per_class, "test_per_class": test_per_class,
                            "rotation": rotation, "shapes": shapes, "seed": seed},
              "counts": {s: {"train": train_per_class, "test": test_per_class} for s in shapes},
              "files": len(shapes) * (train_per_class + test_per_class)}
    try:
        for shape in shapes:
            rng = np.random.default_rng([seed, SHAPES.index(shape)])
            generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            for i in range(train_per_class + test_per_class):
                folder = os.path.join(tmp, shape, "train" if i < train_per_class else "test")
                os.makedirs(folder, exist_ok=True)
                vertices, faces = make_mesh(shape, rng)
                rot = random_rotations(1, rotation, generator)[0].numpy()
                if np.linalg.det(rot) < 0:
                    faces = faces[:, ::-1]
                write_off(os.path.join(folder, f"{shape}_{i + 1:04d}.off"), vertices @ rot.T, faces)
            for split in SPLITS:  # a split with no meshes is still laid out
                os.makedirs(os.path.join(tmp, shape, split), exist_ok=True)
        write_json(record, os.path.join(tmp, SYNTHETIC_MARKER))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); fails if something arrived since
        os.rename(tmp, out_dir)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return record


# --------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyg_implicit.experiments.modelnet.data",
                                description="ModelNet data: a synthetic stand-in in its layout.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synthetic", help=f"write procedural meshes ({', '.join(SHAPES)}) in "
                                         "ModelNet's layout, marked synthetic")
    s.add_argument("--out", required=True, help="output folder (new or empty)")
    s.add_argument("--train-per-class", type=int, default=200)
    s.add_argument("--test-per-class", type=int, default=50)
    s.add_argument("--rotation", default="z", choices=ROTATIONS,
                   help="orientation of each mesh: z (upright, turned about z), so3, o3, none")
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.train_per_class, args.test_per_class) < 0:
        p.error("--train-per-class and --test-per-class must be >= 0")
    try:
        record = write_synthetic_modelnet(args.out, args.train_per_class, args.test_per_class,
                                          args.rotation, seed=args.seed)
    except FileExistsError as e:
        p.error(str(e))
    out = os.path.abspath(args.out)
    print(f"wrote {record['files']} synthetic meshes to {out}: {len(SHAPES)} classes "
          f"({', '.join(SHAPES)}), {args.train_per_class} train + {args.test_per_class} test "
          f"each, rotation {args.rotation!r}, seed {args.seed}; "
          f"marked in {os.path.join(out, SYNTHETIC_MARKER)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
