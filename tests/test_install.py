"""`pip install`: a wheel built from this tree, installed into a throwaway
folder that reuses the running environment's heavy packages (torch, escnn,
torch-geometric), imported and run from outside the source tree."""
import glob
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_USE_INSTALLED = r"""
import importlib.metadata, os, sys, torch
import pyg_implicit
from pyg_implicit.ops import build_csr, fused_point_conv, is_available
from pyg_implicit.plan import edge_kernels
target = sys.argv[1]
assert pyg_implicit.__file__.startswith(target), pyg_implicit.__file__
assert importlib.metadata.version("pyg_implicit") == pyg_implicit.__version__
assert is_available(), "the wheel's compiled extension did not load"
# a fused convolution of the installed package against its own reference path
from pyg_implicit import ImplicitPointConv
from escnn import gspaces, nn as enn
gs = gspaces.rot2dOnR2(4)
G = gs.fibergroup
ft = enn.FieldType(gs, [G.regular_representation, G.trivial_representation])
conv = ImplicitPointConv(ft, ft, backend="fused").double()
ref = ImplicitPointConv(ft, ft, backend="reference").double()
ref.load_state_dict(conv.state_dict())
pos = torch.rand(30, 2, dtype=torch.float64)
x = torch.randn(30, ft.size, dtype=torch.float64)
ei = torch.randint(0, 30, (2, 120))
a, b = conv(x, pos, ei), ref(x, pos, ei)
err = float((a - b).norm() / b.norm())
assert err < 1e-10, err
print("installed", pyg_implicit.__version__, "fused vs reference", err)
"""


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode == 0, " ".join(map(str, cmd)) + "\n" + r.stdout[-3000:] + \
        r.stderr[-3000:]
    return r


def test_wheel_installs_and_runs_outside_the_tree(tmp_path):
    # build from a copy: the wheel build must not touch this tree's build folders
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "csrc"), src / "csrc")
    shutil.copytree(os.path.join(ROOT, "pyg_implicit"), src / "pyg_implicit",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "FORCE_CUDA"}
    env.update(FORCE_ONLY_CPU="1", MAX_JOBS=env.get("MAX_JOBS", "2"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
          "-w", str(wheels), str(src)], env=env, timeout=1500)
    (wheel,) = glob.glob(str(wheels / "pyg_implicit-*.whl"))
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
          "--target", str(site), wheel], env=env, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["PYTHONPATH"] = str(site)
    r = _run([sys.executable, "-c", _USE_INSTALLED, str(site)], cwd=elsewhere, env=env,
             timeout=900)
    assert "fused vs reference" in r.stdout, r.stdout
