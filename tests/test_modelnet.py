"""ModelNet experiment: the classifier's invariance (every group of the paper's table,
implicit and standard kernels, float64), the validation split, fixed evaluation draws,
and the command line on meshes generated here in ModelNet's layout (no ModelNet on
this machine)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from helpers import train_cli
from pyg_implicit.experiments.modelnet import data as mn
from pyg_implicit.experiments.modelnet.model import GROUPS, PointCloudClassifier, make_gspace
from pyg_implicit.experiments.modelnet.train import Clouds, stratified_split

EXACT = 1e-9
# escnn's analytic SO(3)/O(3) bases come from numerically solved coefficients (~1e-8)
NUMERICAL = 1e-6


def clouds(num_graphs=3, num_points=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(num_graphs * num_points, 3, generator=gen, dtype=torch.float64)
    normal = torch.nn.functional.normalize(
        torch.randn(pos.shape, generator=gen, dtype=torch.float64), dim=1)
    return pos, normal, torch.arange(num_graphs).repeat_interleave(num_points)


def small_classifier(group, kernel):
    conv = {"hidden_channels": 2, "hidden_layers": 1, "kernel_nonlinearity": "gated"} \
        if kernel == "implicit" else {}
    return PointCloudClassifier(make_gspace(group), 4, kernel=kernel, channels=(2, 3),
                                num_points=48, ratio=0.25, k=8,
                                conv_kwargs=conv).double().eval()


@pytest.mark.parametrize("kernel", ["implicit", "standard"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_classifier_logits_are_invariant(group, kernel):
    """Invariant under random elements of its group; not under a rotation outside it
    (so the check can fail), for the subgroups."""
    torch.manual_seed(0)
    model = small_classifier(group, kernel)
    gs = model.gspace
    pos, normal, batch = clouds()
    with torch.no_grad():
        logits = model(pos, normal, batch)
        scale = logits.abs().max()
        for _ in range(4):
            R = torch.as_tensor(gs.basespace_action(gs.fibergroup.sample()), dtype=pos.dtype)
            moved = model(pos @ R.T, normal @ R.T, batch)
            tol = NUMERICAL if kernel == "standard" and group in ("so3", "o3") else EXACT
            assert float((moved - logits).abs().max() / scale) < tol
        if group not in ("so3", "o3"):
            c, s = np.cos(0.7), np.sin(0.7)  # about the x axis: in none of the subgroups
            R = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=pos.dtype)
            assert float((model(pos @ R.T, normal @ R.T, batch) - logits).abs().max()
                         / scale) > 1e-6


def test_classifier_batch_equals_one_by_one_and_bad_input():
    model = small_classifier("so2", "implicit")
    pos, normal, batch = clouds()
    with torch.no_grad():
        together = model(pos, normal, batch)
        for b in range(3):
            m = batch == b
            alone = model(pos[m], normal[m], torch.zeros(int(m.sum()), dtype=torch.long))
            torch.testing.assert_close(alone[0], together[b], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="normal"):
        model(pos, normal[:, :2], batch)
    with pytest.raises(ValueError, match="batch"):
        model(pos, normal, batch[:-1])
    with pytest.raises(ValueError, match="group must be one of"):
        make_gspace("so4")


def test_stratified_split():
    labels = np.repeat(np.arange(4), [10, 20, 2, 1])
    train, val = stratified_split(labels, 0.1, seed=3)
    assert sorted(train + val) == list(range(len(labels))) and not set(train) & set(val)
    assert [int((labels[val] == c).sum()) for c in range(4)] == [1, 2, 1, 0]
    assert stratified_split(labels, 0.1, seed=3) == (train, val)
    assert stratified_split(labels, 0.1, seed=4) != (train, val)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shapes") / "ModelNetFake")
    mn.write_synthetic_modelnet(out, 4, 2, rotation="so3", shapes=("box", "cone", "torus"),
                                seed=2)
    return out


@pytest.fixture(scope="module")
def modelnet10_dir(tmp_path_factory):
    """ModelNet10's layout and class names, filled with procedural meshes (2 + 1 each)."""
    out = tmp_path_factory.mktemp("ModelNet10")
    rng = np.random.default_rng(0)
    for c, name in enumerate(mn.MODELNET10_CLASSES):
        shape = mn.SHAPES[c % len(mn.SHAPES)]
        for i in range(3):
            split = "train" if i < 2 else "test"
            os.makedirs(out / name / split, exist_ok=True)
            v, f = mn.make_mesh(shape, rng)
            mn.write_off(str(out / name / split / f"{name}_{i + 1:04d}.off"), v, f)
    return str(out)


def test_eval_clouds_are_fixed_training_clouds_fresh(shapes_dir, tmp_path):
    meshes = mn.ModelNetFolder(shapes_dir, None, train=True, cache_dir=str(tmp_path / "c"))
    fixed = Clouds(meshes, [0, 5], 64, seed=1)
    assert torch.equal(fixed[1].pos, fixed[1].pos) and not torch.equal(fixed[0].pos,
                                                                         fixed[1].pos)
    fresh = Clouds(meshes, [0, 5], 64)
    assert not torch.equal(fresh[0].pos, fresh[0].pos)


def _train(args, tmp_path, ok=True):
    return train_cli("modelnet", args, tmp_path, ok)


SMALL = ["--num-points", "64", "--channels", "2,3", "--k", "8", "--batch-size", "4",
         "--hidden-channels", "2", "--epochs", "1", "--test-rotations", "2"]


@pytest.mark.parametrize("kernel", ["implicit", "standard"])
def test_cli_one_epoch_on_generated_meshes(shapes_dir, tmp_path, kernel):
    run = tmp_path / "run"
    _train(["--data", shapes_dir, "--classes", "auto", "--group", "so2", "--kernel", kernel,
            "--out", str(run), *SMALL], tmp_path)
    with open(run / "result.json") as f:
        r = json.load(f)
    assert r["task"] == "modelnet" and r["kernel"] == kernel and r["group"] == "so2"
    assert r["epochs_completed"] == 1 and 0.0 <= r["test_acc"] <= 1.0
    assert r["test_error"] == pytest.approx(1.0 - r["test_acc"])
    assert r["classes"] == ["box", "cone", "torus"] and r["test_samples"] == 6
    assert r["train_samples"] + r["val_samples"] == 12 and r["val_samples"] == 3
    assert r["dataset"]["synthetic"] and "not ModelNet" in r["dataset"]["name"]
    assert r["test_rotations"] == 2 and r["rotate"] == "z"
    assert {"best.ckpt", "last.ckpt", "train.log"} <= set(os.listdir(run))


def test_cli_on_a_modelnet10_layout(modelnet10_dir, tmp_path):
    run = tmp_path / "run"
    out = _train(["--data", modelnet10_dir, "--classes", "10", "--group", "o3",
                  "--rotate", "so3", "--out", str(run), "--cache", str(tmp_path / "cache"),
                  *SMALL], tmp_path)
    assert "modelnet10_o3_implicit" in out
    with open(run / "result.json") as f:
        r = json.load(f)
    assert r["dataset"] == {"name": "ModelNet10", "synthetic": False}
    assert r["classes"] == list(mn.MODELNET10_CLASSES) and r["test_samples"] == 10
    assert r["published_modelnet40_test_acc"] == {"standard": 79.1, "implicit": 78.9}
    # ModelNet40's classes are not all there: a clear error, no download
    out = _train(["--data", modelnet10_dir, "--classes", "40", "--out", str(tmp_path / "r2"),
                  *SMALL], tmp_path, ok=False)
    assert modelnet10_dir in out and "airplane" in out and "Traceback" not in out
    out = _train(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3"), *SMALL],
                 tmp_path, ok=False)
    assert "nowhere" in out and "Traceback" not in out
