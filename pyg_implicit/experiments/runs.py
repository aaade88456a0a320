"""Bookkeeping that keeps training runs apart: one folder per run, resumption only when
asked and only of the same run (experiment, options, data), atomic writes. Used by
:mod:`pyg_implicit.experiments.engine`; nothing here knows about an experiment."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from typing import Dict, Optional

import torch

RUNS_DIR, RESULT, LAST = "runs", "result.json", "last.ckpt"
# options that do not define a run: a resumed run may change them (--epochs and
# --time-limit stretch the schedule; the data may move if its fingerprint stays)
VOLATILE = ("epochs", "time_limit", "out", "resume", "allow_change", "record", "no_progress",
            "accelerator", "devices", "num_nodes", "threads", "data", "run_name")
# the folder Lightning's launcher gives the processes it starts (they re-run the command)
RUN_DIR_ENV = "PYG_IMPLICIT_RUN_DIR"


def write_json(obj, path: str, exclusive: bool = False) -> None:
    """Write through a temporary file, then rename it (or, ``exclusive``, link it, which
    fails if ``path`` exists): readers and killed runs never see a partial file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.tmp")
    os.makedirs(os.path.dirname(tmp), exist_ok=True)
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
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


def repo_root() -> str:
    """The source tree this package runs from (its git checkout when installed editable)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        raise SystemExit(f"--data: folder {root!r} does not exist")
    out = {}
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path, h = os.path.join(folder, name), hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[os.path.relpath(path, root)] = {"bytes": os.path.getsize(path),
                                                "sha256": h.hexdigest()}
    return out


def run_meta(experiment: str, args, code: Dict) -> Dict:
    """What identifies a run: experiment, options (all but :data:`VOLATILE`), data."""
    return {"experiment": experiment, "code": code, "resumes": [],
            "config": {k: v for k, v in sorted(vars(args).items()) if k not in VOLATILE},
            "data": data_fingerprint(args.data)}


def new_run_dir(out: Optional[str], name: str, create: bool = True) -> str:
    """A fresh folder for a new run: ``out`` (which must be missing or empty) or
    ``runs/<name>-<UTC time>-<pid>``, created by the first process (``create``); the
    processes Lightning launches find it in ``$PYG_IMPLICIT_RUN_DIR``."""
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
    """The checkpoint ``--resume`` names: ``auto`` is ``<out>/last.ckpt``; otherwise a
    checkpoint file or a run folder."""
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


def _differences(saved: Dict, now: Dict) -> Dict[str, tuple]:
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
            if saved.get(k, KeyError) != now.get(k, KeyError)}


def check_resumable(path: str, meta: Dict, allow_change) -> Dict:
    """The run metadata to continue ``path`` with: refuses a checkpoint of another
    experiment, options or data unless the difference is allowed (and then recorded)."""
    saved = torch.load(path, map_location="cpu", weights_only=False).get("run")
    if saved is None or saved.get("experiment") != meta["experiment"]:
        raise SystemExit(f"--resume: {path} is not a checkpoint of a "
                         f"{meta['experiment']!r} run of this engine")
    diff = _differences(saved["config"], meta["config"])
    data_diff = _differences(saved["data"], meta["data"])
    if data_diff:
        diff["data"] = (f"{len(saved['data'])} files", f"{len(meta['data'])} files, "
                        f"{len(data_diff)} differing ({', '.join(list(data_diff)[:3])})")
    allowed = {k.strip().lstrip("-").replace("-", "_") for item in allow_change
               for k in item.split(",")}
    refused = {k: v for k, v in diff.items() if k not in allowed}
    if refused:
        raise SystemExit(f"--resume: {path} was written by another run: " + "; ".join(
            f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in refused.items())
            + f". Start a new run, or pass --allow-change {','.join(refused)} to continue it")
    resume = {"checkpoint": path, "changed": {k: list(v) for k, v in diff.items()},
              "code": meta["code"], "previous_code": saved["code"]}
    return {**meta, "resumes": saved["resumes"] + [resume]}
