#!/usr/bin/env python3
"""Print the CUDA toolkit folder to build with; exit 1 with the reason if none.

The one place that decides ``CUDA_HOME`` (used by setup.py, the Makefile and
benchmarks/gpu_check.sh). A toolkit is a folder with an executable
``bin/nvcc`` *and* the CUDA runtime library (``lib64/``, ``lib/`` or
``targets/*/lib/libcudart.so*``). Candidates, in order: ``$CUDA_HOME``,
``$CUDA_PATH``, ``/usr/local/cuda``, ``/usr/local/cuda-*`` (newest first), then
the folder above the ``nvcc`` found on ``PATH``, following symlinks and the
two-line ``exec /path/to/nvcc "$@"`` wrappers some images install as
``/usr/local/bin/nvcc`` (for which ``dirname(dirname(nvcc))`` is ``/usr/local``,
where linking fails). Needs neither torch nor a GPU.
"""
import glob
import os
import re
import shutil
import sys

_RUNTIME = ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*")


def is_toolkit(folder):
    nvcc = os.path.join(folder, "bin", "nvcc")
    return (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)
            and any(glob.glob(os.path.join(folder, pattern)) for pattern in _RUNTIME))


def _version_key(path):
    return [int(n) for n in re.findall(r"\d+", os.path.basename(path))]


def _nvcc_targets(nvcc):
    """The real nvcc behind ``nvcc``: symlinks resolved, shell wrappers followed."""
    seen = []
    for _ in range(4):
        nvcc = os.path.realpath(nvcc)
        seen.append(nvcc)
        try:
            with open(nvcc, "rb") as f:
                head = f.read(4096)
        except OSError:
            break
        if not head.startswith(b"#!"):
            break
        m = re.search(rb'exec\s+"?([^"\s]+/nvcc)"?', head)
        if not m:
            break
        nvcc = m.group(1).decode()
    return seen


def candidates():
    out = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    out += sorted(glob.glob("/usr/local/cuda-*"), key=_version_key, reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        out += [os.path.dirname(os.path.dirname(p)) for p in _nvcc_targets(nvcc)]
    return [c for c in out if c]


def find_cuda_home():
    """``(folder, None)`` or ``(None, reason)``."""
    tried = []
    for folder in candidates():
        if is_toolkit(folder):
            return os.path.realpath(folder), None
        if folder in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
            print(f"find_cuda_home: ignoring {folder} (set in the environment) since it "
                  f"lacks bin/nvcc or libcudart", file=sys.stderr)
        tried.append(folder)
    return None, ("no CUDA toolkit (a folder with bin/nvcc and libcudart) among: "
                  + (", ".join(dict.fromkeys(tried)) or "no candidates")
                  + "; set CUDA_HOME to one")


if __name__ == "__main__":
    home, reason = find_cuda_home()
    if home is None:
        print(reason, file=sys.stderr)
        sys.exit(1)
    print(home)
