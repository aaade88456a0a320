"""Bookkeeping that keeps training runs apart: one folder per run, checkpoints that
record what they belong to, resumption only when asked, atomic writes.

Used by :mod:`pyg_implicit.train`; nothing here knows about a particular experiment.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from typing import Dict, Iterable, Mapping, Optional

import torch

RUNS_DIR = "runs"  # default parent of run folders (relative to the working directory)
LAST, BEST, RESULT = "last.pt", "best.pt", "result.json"


# --------------------------------------------------------------------------- atomic writes

def _atomic(path: str, write) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (or a
    run killed mid-write) sees the old file or the new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path: str) -> None:
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj, path: str) -> None:
    _atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


# --------------------------------------------------------------------------- identity

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


def differences(saved: Mapping, now: Mapping, legacy: Mapping = ()) -> Dict[str, tuple]:
    """``{key: (saved, now)}`` for every key whose value differs; a key missing from
    ``saved`` takes its ``legacy`` value (what runs did before the option existed)."""
    saved = {**{k: v for k, v in dict(legacy).items() if k in now}, **saved}
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

def new_run_dir(out: Optional[str], name: str) -> str:
    """A fresh folder for a new run: ``out`` (which must be missing or empty) or
    ``runs/<name>-<UTC time>-<pid>``, created exclusively."""
    if out is None:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = os.path.join(RUNS_DIR, f"{name}-{stamp}-{os.getpid()}")
        os.makedirs(out)  # exclusive: the pid keeps simultaneous runs apart
        return out
    if os.path.isdir(out) and os.listdir(out):
        raise SystemExit(f"--out {out} already holds a run ({', '.join(sorted(os.listdir(out))[:4])}"
                         f"); pass --resume auto to continue it, or another --out")
    os.makedirs(out, exist_ok=True)
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


def check_record_target(path: str, overwrite: bool) -> None:
    """Refuse, before any training, to replace a recorded result unless asked."""
    if os.path.exists(path) and not overwrite:
        raise SystemExit(f"--record: {path} already holds a recorded result; pass "
                         f"--overwrite-record to replace it")


def allowed_changes(keys: Iterable[str]) -> set:
    return {k.strip().lstrip("-").replace("-", "_") for item in keys or () for k in item.split(",")
            if k.strip()}
