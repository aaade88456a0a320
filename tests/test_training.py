"""The training engine (pyg_implicit.experiments.engine) through the N-body experiment's
command line, as a user runs it: run folders, resumption, recorded results, data-parallel
processes; and the engine's schedule and weight average on their own."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pyg_implicit.experiments.nbody import data as nb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1")


def _run(args, cwd=REPO, ok=True, timeout=300):
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=_env(), capture_output=True,
                       text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
        return r.stdout
    assert r.returncode != 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def _result(run_dir):
    with open(os.path.join(run_dir, "result.json")) as f:
        return json.load(f)


def _generate(data, seed):
    _run(["pyg_implicit.experiments.nbody.data", "generate", "--out", str(data),
          "--num-train", "12", "--num-val", "6", "--num-test", "6", "--length", "1000",
          "--seed", str(seed), "--no-progress"])


def _step_losses(run_dir):
    """The per-step training loss that Lightning's CSV logger wrote (all launches)."""
    import csv

    losses = {}
    logs = os.path.join(run_dir, "logs")
    for version in sorted(os.listdir(logs)):
        with open(os.path.join(logs, version, "metrics.csv")) as f:
            for row in csv.DictReader(f):
                if row.get("loss"):
                    losses[int(row["step"])] = float(row["loss"])
    return [losses[k] for k in sorted(losses)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nbody_cli")
    data, other_data = tmp / "data", tmp / "other_data"
    _generate(data, 1)
    _generate(other_data, 2)
    train_args = ["pyg_implicit.train", "nbody", "--data", str(data), "--group", "so2z",
                  "--frame-0", "3", "--frame-T", "8", "--batch-size", "4", "--num-layers", "1",
                  "--scalars", "2", "--vectors", "1", "--hidden-channels", "4",
                  "--hidden-layers", "1", "--band-limit", "1", "--threads", "1",
                  "--ema", "0.5", "--no-progress"]
    run1 = tmp / "run1"
    out1 = _run(train_args + ["--out", str(run1), "--epochs", "1"])
    res1 = _result(run1)
    out2 = _run(train_args + ["--out", str(run1), "--resume", "auto", "--epochs", "2"])
    res2 = _result(run1)
    # the same two epochs without the interruption
    _run(train_args + ["--epochs", "2", "--out", str(tmp / "straight")])
    straight = _result(tmp / "straight")
    return dict(tmp=tmp, data=data, other_data=other_data, run1=run1, out1=out1, out2=out2,
                res1=res1, res2=res2, straight=straight, train_args=train_args)


def test_cli_smoke_and_resume(tiny_run):
    r1, r2 = tiny_run["res1"], tiny_run["res2"]
    assert "test_mse" in tiny_run["out1"]
    for key in ("test_mse", "best_val_mse", "command", "group", "variant", "wall_time_s",
                "git_commit", "history"):
        assert key in r1, key
    assert r1["group"] == "so2z" and r1["variant"] == "charged"
    assert r1["model_config"]["node_charge"] is False  # "auto" on `charged`
    assert r1["config"]["optimizer"] == "adamw" and r1["config"]["weight_decay"] == 0.05
    assert r1["epochs_completed"] == 1 and np.isfinite(r1["test_mse"])
    assert "pyg_implicit.train nbody" in r1["command"]
    assert r1["run_dir"] == str(tiny_run["run1"]) and r1["config"]["batch_size"] == 4
    assert r1["train_samples"] == 12  # the protocol's pairs only: no time reversal
    # labelled: this tiny run departs from EGNN's protocol, and says how
    label = r1["protocol"]
    assert label["data_split"] == "egnn" and label["on_protocol"] is False
    assert any("frames 3 -> 8" in e for e in label["extensions"])
    assert not any("time reversal" in e for e in label["extensions"])
    assert r1["data"] == str(tiny_run["data"]) and "commit" in r1["code"]
    assert r1["resumes"] == []
    # the second command was asked to resume, and did
    assert "resumed from" in tiny_run["out2"] and "resumed" not in tiny_run["out1"]
    assert r2["epochs_completed"] == 2 and len(r2["resumes"]) == 1
    assert r2["history"][0] == r1["history"][0]
    assert {"train.log", "last.ckpt", "best.ckpt", "result.json", "logs"} <= \
        set(os.listdir(tiny_run["run1"]))
    assert open(tiny_run["run1"] / "train.log").read().count("test: ") == 2
    # resuming restores the model, its weight average, the optimiser, the schedule and
    # the sampler: the resumed run trains and validates exactly like an uninterrupted one
    straight = tiny_run["straight"]
    for key in ("train_mse", "val_mse", "lr"):
        assert [h[key] for h in r2["history"]] == [h[key] for h in straight["history"]], key
    assert _step_losses(tiny_run["run1"]) == _step_losses(tiny_run["tmp"] / "straight")
    # bitwise, between processes: without MKL's reproducible mode (engine.py) the weights
    # differed in their last bits with the heap layout, and this failed in ~40% of launches
    assert r1["mkl_cbwr"] == r2["mkl_cbwr"] == os.environ.get("MKL_CBWR", "AUTO,STRICT")
    assert r2["test_mse"] == straight["test_mse"]


def test_result_records_data_fingerprint(tiny_run):
    fp = tiny_run["res1"]["data_fingerprint"]
    assert set(fp) == {"train.npz", "val.npz", "test.npz", "meta.json"}
    assert all(len(f["sha256"]) == 64 for f in fp.values())


def test_weight_average_is_what_is_validated_and_tested(tiny_run):
    """best.ckpt holds the average (decay 0.5) as its state_dict and the raw weights
    beside it; loaded into a fresh model, the average reproduces the test MSE."""
    from pyg_implicit.experiments.nbody.model import fully_connected_edges
    from pyg_implicit.experiments.nbody.train import load_model

    ck = torch.load(tiny_run["run1"] / "best.ckpt", weights_only=False)
    avg, raw = ck["state_dict"], ck["raw_state_dict"]
    assert set(avg) == set(raw)
    assert any(not torch.equal(avg[k], raw[k]) for k in raw)
    model = load_model(str(tiny_run["run1"] / "best.ckpt")).eval()
    t = nb.load_split(str(tiny_run["data"]), "test", 3, 8)
    S = t["charges"].shape[0]
    with torch.no_grad():
        pred = model(t["pos"].reshape(-1, 3), t["vel"].reshape(-1, 3),
                     t["charges"].reshape(-1), fully_connected_edges(S, 5))
    mse = float(((pred - t["target"].reshape(-1, 3)) ** 2).mean())
    assert mse == pytest.approx(tiny_run["res2"]["test_mse"], rel=1e-6)


def _copy_run(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run1"], run)
    return run


def test_resume_refuses_other_data_and_configuration(tiny_run, tmp_path):
    run = _copy_run(tiny_run, tmp_path)
    args = tiny_run["train_args"] + ["--resume", str(run), "--epochs", "3"]
    other = [a if a != str(tiny_run["data"]) else str(tiny_run["other_data"]) for a in args]
    err = _run(other, ok=False)
    assert "was written by another run" in err and "data:" in err and "differing" in err
    err = _run(args + ["--lr", "0.01"], ok=False)
    assert "lr: 0.001 in the checkpoint, 0.01 now" in err and "--allow-change lr" in err
    err = _run(args + ["--batch-size", "3"], ok=False)
    assert "batch_size: 4 in the checkpoint, 3 now" in err
    assert _result(run)["epochs_completed"] == 2  # nothing was touched
    # a deliberate change, allowed and recorded
    _run(args + ["--lr", "0.01", "--allow-change", "lr"])
    res = _result(run)
    assert res["epochs_completed"] == 3 and res["resumes"][-1]["changed"] == {"lr": [0.001, 0.01]}
    # a run folder that holds a run is not reused by a fresh run
    err = _run(tiny_run["train_args"] + ["--out", str(run), "--epochs", "1"], ok=False)
    assert "already holds a run" in err and "--resume auto" in err
    err = _run(tiny_run["train_args"] + ["--resume", "auto", "--epochs", "1"], ok=False)
    assert "--resume auto continues the run in --out" in err
    # a file that is no checkpoint of this experiment
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    err = _run(tiny_run["train_args"] + ["--resume", str(tmp_path / "other.ckpt")], ok=False)
    assert "is not a checkpoint of a 'nbody' run" in err


def _results_snapshot():
    folder = os.path.join(REPO, "benchmarks", "results")
    snap = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            snap[path] = (os.path.getsize(path), os.path.getmtime(path))
    return snap


def test_smoke_run_then_full_run_do_not_interact(tiny_run, tmp_path):
    """A one-epoch smoke run on one dataset, then another run on another, in the same
    working directory: each starts fresh in its own folder under runs/, and nothing
    under benchmarks/results/ changes."""
    before = _results_snapshot()
    base = list(tiny_run["train_args"])
    _run(base + ["--epochs", "1"], cwd=tmp_path)
    other = [a if a != str(tiny_run["data"]) else str(tiny_run["other_data"]) for a in base]
    out = _run(other + ["--epochs", "2"], cwd=tmp_path)
    assert "resumed" not in out
    folders = sorted(os.listdir(tmp_path / "runs"))
    assert len(folders) == 2, folders
    results = [_result(tmp_path / "runs" / f) for f in folders]
    assert sorted(r["epochs_completed"] for r in results) == [1, 2]
    assert {r["data"] for r in results} == {str(tiny_run["data"]), str(tiny_run["other_data"])}
    assert results[0]["data_fingerprint"] != results[1]["data_fingerprint"]
    assert _results_snapshot() == before


def test_concurrent_runs_do_not_share_files(tiny_run, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", *tiny_run["train_args"], "--epochs", "1",
                               "--seed", str(seed)], cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    folders = sorted(os.listdir(tmp_path / "runs"))
    assert len(folders) == 2, folders
    seeds = sorted(_result(tmp_path / "runs" / f)["config"]["seed"] for f in folders)
    assert seeds == [0, 1]
    for f in folders:
        assert {"train.log", "last.ckpt", "best.ckpt", "result.json"} <= \
            set(os.listdir(tmp_path / "runs" / f))


def test_record_is_explicit_and_never_overwrites(tiny_run, tmp_path):
    record = tmp_path / "recorded.json"
    args = tiny_run["train_args"] + ["--epochs", "1", "--record", str(record)]
    _run(args + ["--out", str(tmp_path / "a")])
    assert json.load(open(record)) == _result(tmp_path / "a")
    err = _run(args + ["--out", str(tmp_path / "b")], ok=False)
    assert "already holds a recorded result" in err
    assert not (tmp_path / "b").exists()  # refused before training
    assert json.load(open(record))["run_dir"] == str(tmp_path / "a")


def test_kill_mid_epoch_then_resume_equals_uninterrupted(tiny_run, tmp_path):
    """SIGKILL a run during its second epoch: its last checkpoint (epoch 1) loads, and
    resuming it reproduces the loss history of an uninterrupted run bit for bit."""
    args = tiny_run["train_args"] + ["--epochs", "3", "--batch-size", "1"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", *args, "--out", str(killed)], cwd=tmp_path,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "last.ckpt").exists() and proc.poll() is None and \
            time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    ck = torch.load(killed / "last.ckpt", weights_only=False)  # the last good checkpoint
    assert ck["epoch"] < 2 and not (killed / "result.json").exists()
    _run(args + ["--out", str(killed), "--resume", "auto"])
    _run(args + ["--out", str(tmp_path / "straight")])
    resumed, straight = _result(killed), _result(tmp_path / "straight")
    for key in ("train_mse", "val_mse", "lr"):
        assert [h[key] for h in resumed["history"]] == [h[key] for h in straight["history"]], key
    assert resumed["test_mse"] == straight["test_mse"]


def test_two_processes_train_like_one_on_the_same_global_batch(tiny_run, tmp_path):
    """DDP over two CPU processes (gloo, launched by Lightning) with 2 graphs each per
    step against one process with 4: the same loss at every step, the same validation
    and test MSE, within float32 tolerance."""
    base = [a for a in tiny_run["train_args"]]
    one, two = tmp_path / "one", tmp_path / "two"
    i = base.index("--batch-size")
    _run(base + ["--epochs", "2", "--out", str(one)])
    two_args = base[:i + 1] + ["2"] + base[i + 2:]
    out = _run(two_args + ["--epochs", "2", "--out", str(two), "--devices", "2",
                           "--accelerator", "cpu"], timeout=600)
    assert "processes" in _result(two) and _result(two)["processes"] == 2, out
    a, b = _step_losses(one), _step_losses(two)
    assert len(a) == len(b) == 2 * 12 // 4
    np.testing.assert_allclose(b, a, rtol=1e-5)
    for key in ("train_mse", "val_mse", "lr"):
        np.testing.assert_allclose([h[key] for h in _result(two)["history"]],
                                   [h[key] for h in _result(one)["history"]], rtol=1e-5)
    assert _result(two)["test_mse"] == pytest.approx(_result(one)["test_mse"], rel=1e-5)


def test_train_windows(tiny_run):
    """Window k of each training simulation is the pair of frames (frame_0 - k, frame_T - k)."""
    from pyg_implicit.experiments.nbody.train import load_train_windows

    train = load_train_windows(str(tiny_run["data"]), 3, 8, 3, None, time_reversal=True)
    with np.load(tiny_run["data"] / "train.npz") as z:
        loc, vel, charges = z["loc"], z["vel"], z["charges"]
    S = loc.shape[0]
    assert train["pos"].shape == (6 * S, *loc.shape[2:])
    cfg = nb.SimConfig.for_variant("charged")
    for k in range(3):
        rows, back = slice(k * S, (k + 1) * S), slice((3 + k) * S, (4 + k) * S)
        np.testing.assert_array_equal(train["pos"][rows].numpy(), loc[:, 3 - k])
        np.testing.assert_array_equal(train["vel"][rows].numpy(), vel[:, 3 - k])
        np.testing.assert_array_equal(train["target"][rows].numpy(), loc[:, 8 - k])
        np.testing.assert_array_equal(train["charges"][rows].numpy(), charges)
        # then the same windows backwards
        np.testing.assert_array_equal(train["pos"][back].numpy(), loc[:, 8 - k])
        np.testing.assert_array_equal(train["target"][back].numpy(), loc[:, 3 - k])
        np.testing.assert_array_equal(
            train["vel"][back].numpy(),
            nb.reverse_in_time(cfg, loc[:, 8 - k], vel[:, 8 - k], charges).astype(np.float32))
    err = _run(tiny_run["train_args"] + ["--train-windows", "5", "--epochs", "1", "--out",
                                         str(tiny_run["tmp"] / "windows")], ok=False)
    assert "--train-windows must lie in [1, frame_0 + 1 = 4]" in err


def test_node_charge_follows_the_variant():
    """The external field couples to each q_i, so the charge-flip invariant model (no
    q_i node feature) is only the automatic choice without a field."""
    from pyg_implicit.experiments.nbody.train import model_config

    def node_charge(choice, variant):
        args = SimpleNamespace(node_charge=choice, grid="auto", group="o3", backend="auto",
                               num_layers=1, scalars=1, vectors=1, tensors=0,
                               hidden_channels=1, hidden_layers=1, band_limit=1,
                               no_velocity_attr=False, width=1.0, no_pos_updates=False,
                               no_relative_velocity=False)
        return model_config(args, variant)["node_charge"]

    assert [node_charge(c, "charged") for c in ("auto", "on", "off")] == [False, True, False]
    assert [node_charge(c, "charged-field") for c in ("auto", "on", "off")] == \
        [True, True, False]


# --------------------------------------------------------------------------- engine parts

def test_annealed_schedule():
    """Linear warm-up over the first epoch, cosine to 1% over the epochs, or over the
    time budget when that runs out first (progress in time fixed per epoch)."""
    from pyg_implicit.experiments.engine import AnnealedSchedule

    s = AnnealedSchedule(1.0, epochs=10, warmup_epochs=1, budget_s=0)
    assert [s.lr_factor(k, 4) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    cosine = lambda p: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    assert s.lr_factor(4, 4) == pytest.approx(1.0)
    assert s.lr_factor(22, 4) == pytest.approx(cosine(18 / 36))
    assert s.lr_factor(40, 4) == pytest.approx(0.01)
    # a budget of 100 s, 60 used at the start of this epoch, the last epoch took 20 s:
    # halfway through the epoch the progress is (60 + 10) / 100, ahead of the epochs'
    t = AnnealedSchedule(1.0, epochs=10, warmup_epochs=1, budget_s=100)
    t.used_s, t.last_epoch_s, t._step0 = 60.0, 20.0, 8
    assert t.lr_factor(10, 4) == pytest.approx(cosine(0.7))
    t.used_s = 100.0
    assert t.lr_factor(10, 4) == pytest.approx(0.01)


def test_weight_ema_update():
    """The average follows ``min(decay, (1 + t) / (10 + t))``; swapping it in and out
    for validation restores the raw weights exactly."""
    from pyg_implicit.experiments.engine import WeightEMA

    model = torch.nn.Linear(3, 2)
    ema = WeightEMA(0.9)
    ema.on_fit_start(None, model)
    avg_ref = [p.detach().clone() for p in model.parameters()]
    for t in range(120):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.on_train_batch_end(None, model, None, None, t)
        d = min(0.9, (1 + t) / (10 + t))  # warm-up: 0.1, 0.18, ..., then 0.9
        avg_ref = [d * a + (1 - d) * p.detach() for a, p in zip(avg_ref, model.parameters())]
        if t in (0, 5, 119):
            for avg, ref in zip(ema.average, avg_ref):
                torch.testing.assert_close(avg, ref)
    raw = [p.detach().clone() for p in model.parameters()]
    ema.on_validation_epoch_start(None, model)
    for p, ref in zip(model.parameters(), avg_ref):
        torch.testing.assert_close(p.detach(), ref)
    ema.on_validation_epoch_end(None, model)
    for p, r in zip(model.parameters(), raw):
        assert torch.equal(p.detach(), r)
    assert ema.state_dict() == {"num_updates": 120}
