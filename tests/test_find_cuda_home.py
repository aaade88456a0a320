"""csrc/find_cuda_home.py: the one place that picks the CUDA toolkit to build with."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "find_cuda_home", os.path.join(ROOT, "csrc", "find_cuda_home.py"))
fch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fch)


def _toolkit(folder, runtime=True):
    os.makedirs(folder / "bin")
    nvcc = folder / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho nvcc\n")
    nvcc.chmod(0o755)
    if runtime:
        os.makedirs(folder / "lib64")
        (folder / "lib64" / "libcudart.so.13").write_bytes(b"")
    return folder


def test_a_toolkit_needs_nvcc_and_the_runtime(tmp_path):
    assert fch.is_toolkit(str(_toolkit(tmp_path / "cuda")))
    assert not fch.is_toolkit(str(_toolkit(tmp_path / "shim_only", runtime=False)))
    assert not fch.is_toolkit(str(tmp_path / "missing"))


def test_wrapper_scripts_are_followed_to_the_real_toolkit(tmp_path):
    real = _toolkit(tmp_path / "cuda-13.0")
    shim = tmp_path / "usr_local" / "bin"
    os.makedirs(shim)
    (shim / "nvcc").write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    (shim / "nvcc").chmod(0o755)
    targets = fch._nvcc_targets(str(shim / "nvcc"))
    assert targets[-1] == str(real / "bin" / "nvcc")
    folders = [os.path.dirname(os.path.dirname(t)) for t in targets]
    # dirname(dirname(shim)) is not a toolkit (the bug this module exists for) ...
    assert not fch.is_toolkit(folders[0])
    # ... the folder behind the wrapper is
    assert fch.is_toolkit(folders[-1])


def test_environment_first_and_a_clear_error_without_any(tmp_path, monkeypatch):
    good = _toolkit(tmp_path / "mine")
    monkeypatch.setenv("CUDA_HOME", str(good))
    assert fch.find_cuda_home() == (os.path.realpath(good), None)
    monkeypatch.setattr(fch, "candidates", lambda: [str(tmp_path / "nothing")])
    home, reason = fch.find_cuda_home()
    assert home is None and "no CUDA toolkit" in reason and "nothing" in reason
