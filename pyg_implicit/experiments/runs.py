"""Bookkeeping that keeps training runs apart: one folder per run, checkpoints that
record what they belong to, resumption only when asked, atomic writes.

Used by :mod:`pyg_implicit.experiments.engine`; nothing here knows about a particular
experiment.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from typing import Dict, Iterable, Mapping, Optional


RUNS_DIR = "runs"  # default parent of run folders (relative to the working directory)
RESULT = "result.json"
LAST = "last.ckpt"
# options that do not define a run: a resumed run may change them (--epochs and
# --time-limit stretch the schedule; the data may move if its fingerprint stays)
VOLATILE = ("epochs", "time_limit", "out", "resume", "allow_change", "record", "no_progress",
            "accelerator", "devices", "num_nodes", "threads", "data", "run_name")
# the folder Lightning's launcher gives the processes it starts (they re-run the command)
RUN_DIR_ENV = "PYG_IMPLICIT_RUN_DIR"


# --------------------------------------------------------------------------- atomic writes

def _atomic(path: str, write, exclusive: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (or a
    run killed mid-write) sees the old file or the new one, never a partial one.
    ``exclusive``: link instead of rename, which fails if ``path`` exists."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise SystemExit(f"{path} already exists; it is not replaced") from None
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj, path: str, exclusive: bool = False) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()), exclusive)


# --------------------------------------------------------------------------- identity

def repo_root() -> str:
    """The source tree this package runs from (its git checkout when installed editable)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_config(args) -> Dict:
    """The resolved options that define a run (all but :data:`VOLATILE`)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in VOLATILE}


def code_version(root: str) -> Dict[str, Optional[str]]:
    """Git commit of ``root`` and whether tracked files differ from it."""
    def git(*args):
        return subprocess.check_output(["git", *args], cwd=root, stderr=subprocess.DEVNULL,
                                       text=True).strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except Exception:
        return {"commit": None, "dirty": None}


def data_fingerprint(root: str) -> Dict[str, Dict]:
    """``{file: {"bytes": size, "sha256": hash}}`` of every file under ``root``."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    out = {}
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[os.path.relpath(path, root)] = {"bytes": os.path.getsize(path),
                                                "sha256": h.hexdigest()}
    return out


def differences(saved: Mapping, now: Mapping) -> Dict[str, tuple]:
    """``{key: (saved, now)}`` for every key whose value differs."""
    missing = object()
    diff = {}
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, missing), now.get(key, missing)
        if a != b:
            diff[key] = (None if a is missing else a, None if b is missing else b)
    return diff


def describe(diff: Mapping[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())


# --------------------------------------------------------------------------- run folders

def new_run_dir(out: Optional[str], name: str, create: bool = True) -> str:
    """A fresh folder for a new run: ``out`` (which must be missing or empty) or
    ``runs/<name>-<UTC time>-<pid>``, created exclusively by the first process
    (``create``); the processes Lightning launches find it in ``$PYG_IMPLICIT_RUN_DIR``."""
    if not create:
        return os.environ.get(RUN_DIR_ENV) or out
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = os.path.join(RUNS_DIR, f"{name}-{stamp}-{os.getpid()}")
        os.makedirs(out)  # exclusive: the pid keeps simultaneous runs apart
    elif os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"--out {out} already holds a run ({', '.join(sorted(os.listdir(out))[:4])}"
                         f"); pass --resume auto to continue it, or another --out")
    os.makedirs(out, exist_ok=True)
    os.environ[RUN_DIR_ENV] = out
    return out


def resume_checkpoint(resume: str, out: Optional[str]) -> str:
    """Path of the checkpoint that ``--resume`` names: ``auto`` is ``<out>/last.pt``;
    otherwise a checkpoint file or a run folder."""
    if resume == "auto":
        if out is None:
            raise SystemExit("--resume auto continues the run in --out: pass --out DIR")
        path = os.path.join(out, LAST)
    else:
        path = os.path.join(resume, LAST) if os.path.isdir(resume) else resume
        if out is not None and os.path.abspath(os.path.dirname(path)) != os.path.abspath(out):
            raise SystemExit(f"--resume {resume} continues the run in "
                             f"{os.path.dirname(path)}, not in --out {out}")
    if not os.path.isfile(path):
        raise SystemExit(f"--resume {resume}: no checkpoint at {path}")
    return path


def allowed_changes(keys: Iterable[str]) -> set:
    return {k.strip().lstrip("-").replace("-", "_") for item in keys or () for k in item.split(",")
            if k.strip()}
