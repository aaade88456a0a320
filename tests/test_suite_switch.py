"""The suite's own guarantees: without the compiled extension the library fails
gracefully, and a run that requires a backend (PYG_IMPLICIT_REQUIRE, set by
.ci/run) fails instead of skipping when the extension cannot be loaded."""
import os
import subprocess
import sys
import textwrap


TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# imported by `pytest -p`, before any test module: pyg_implicit._C cannot load
BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "pyg_implicit._C":
                raise ImportError("blocked for the test")
            return None

    sys.meta_path.insert(0, _Block())
""")


def _pytest(tmp_path, *args, require=None, block=True):
    (tmp_path / "block_pyg_implicit_ext.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "PYG_IMPLICIT_REQUIRE"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    if require:
        env["PYG_IMPLICIT_REQUIRE"] = require
    plugin = ["-p", "block_pyg_implicit_ext"] if block else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout + r.stderr


FUSED_TEST = "tests/test_fused_op.py::test_empty_graph_and_isolated_nodes[fused_cpu]"


def test_unloadable_extension_fails_a_run_that_requires_it(tmp_path):
    rc, out = _pytest(tmp_path, FUSED_TEST, require="fused_cpu")
    assert rc != 0, out
    assert "backend fused_cpu is required" in out and "blocked for the test" in out, out
    assert "fused_cpu: 1 failed" in out, out


def test_unloadable_extension_skips_without_the_switch(tmp_path):
    rc, out = _pytest(tmp_path, FUSED_TEST)
    assert rc == 0, out
    assert "1 skipped" in out and "fused_cpu: 1 skipped" in out, out


def test_required_backend_that_ran_no_test_fails_the_run(tmp_path):
    # the extension loads, but the selected tests never exercise it
    rc, out = _pytest(tmp_path, "tests/test_graph.py::test_bad_input",
                      require="fused_cpu", block=False)
    assert rc != 0, out
    assert "required backend(s) ['fused_cpu']" in out and "passed no test" in out, out


def test_unknown_backend_name(tmp_path):
    rc, out = _pytest(tmp_path, FUSED_TEST, require="fused_gpu", block=False)
    assert rc != 0 and "unknown backend" in out, out


def test_unavailable_extension_is_graceful():
    code = BLOCKER + textwrap.dedent(r"""
        import torch
        from pyg_implicit.ops import is_available, fused_point_conv, build_csr
        assert not is_available()
        try:
            fused_point_conv(torch.zeros(1, 1), torch.zeros(1, 3), torch.zeros(1, 3), None,
                             build_csr(torch.zeros(2, 0, dtype=torch.long), 1), None)
        except RuntimeError as e:
            assert "pyg_implicit._C" in str(e), e
            print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
