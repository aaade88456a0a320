"""Suite-wide plumbing: seeded randomness, a reproducible Hypothesis profile, and
compiled backends that cannot pass by skipping (see ``backends.py``).

- ``PYG_IMPLICIT_REQUIRE=fused_cpu[,cuda,...]``: a test marked
  ``@pytest.mark.backend(NAME)`` fails instead of skipping when NAME is
  unavailable, and a required backend that ran no test fails the session.
  ``.ci/run``, ``benchmarks/gpu_check.sh`` and the CUDA emulation set it.
- ``HYPOTHESIS_PROFILE``: ``ci`` (default: derandomised, 50 examples per
  property, the same on every run and machine), ``quick`` (derandomised, 6
  examples: the CUDA emulation and the GPU check) or ``explore`` (random, 500
  examples, failures kept in ``.hypothesis/``). Without Hypothesis (the GPU
  image) the property tests run their pinned examples only.
- Every test starts from seed 0 of torch, numpy and ``random``.
"""
from __future__ import annotations

import collections
import os
import random

import pytest
import torch

import backends

try:  # escnn's group sampling draws from numpy's global generator
    import numpy as np
except ImportError:  # pragma: no cover - a minimal GPU image
    np = None

try:  # absent on the GPU image (tests/test_fused_op.py then runs pinned examples)
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    settings = None
if settings is not None:
    _SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large,
                HealthCheck.function_scoped_fixture]
    settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                              max_examples=50, print_blob=True,
                              suppress_health_check=_SLOW_OK)
    settings.register_profile("explore", derandomize=False, deadline=None,
                              max_examples=500, print_blob=True,
                              suppress_health_check=_SLOW_OK)
    # the CUDA source emulated on CPU threads, or a GPU run with little time
    settings.register_profile("quick", derandomize=True, database=None, deadline=None,
                              max_examples=6, print_blob=True,
                              suppress_health_check=_SLOW_OK)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

UNMARKED = "no compiled backend"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "backend(name): the test exercises a compiled backend of the fused op "
                   f"({', '.join(backends.NAMES)}); skipped when it is unavailable, failed "
                   f"when it is listed in {backends.REQUIRE_ENV}")
    config._pygi_required = backends.required()  # validates the variable early
    config._pygi_backend_of = {}
    config._pygi_tally = _BackendTally(config)
    config.pluginmanager.register(config._pygi_tally, "pyg_implicit_backend_tally")


def pytest_report_header(config):
    lines = []
    for name in backends.NAMES:
        ok, why = backends.availability(name)
        need = " (required)" if name in config._pygi_required else ""
        lines.append(f"pyg_implicit backend {name}{need}: "
                     + ("available" if ok else f"unavailable: {why}"))
    return lines


def _backends_of(item):
    return tuple(m.args[0] for m in item.iter_markers("backend"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = _backends_of(item)
        for name in names:
            if name not in backends.NAMES:
                raise pytest.UsageError(f"{item.nodeid}: unknown backend marker {name!r}")
        config._pygi_backend_of[item.nodeid] = names or (UNMARKED,)


def pytest_runtest_setup(item):
    for name in _backends_of(item):
        ok, why = backends.availability(name)
        if ok:
            continue
        if name in item.config._pygi_required:
            pytest.fail(f"backend {name} is required ({backends.REQUIRE_ENV}) but "
                        f"unavailable: {why}", pytrace=False)
        pytest.skip(f"backend {name} unavailable: {why}")


class _BackendTally:
    """Outcome of every test, counted per backend marker, for the summary line."""

    def __init__(self, config):
        self.config = config
        self.outcome = {}

    def pytest_runtest_logreport(self, report):
        previous = self.outcome.get(report.nodeid)
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.skipped and previous is None:
            self.outcome[report.nodeid] = "skipped"
        elif report.when == "call" and report.passed and previous is None:
            self.outcome[report.nodeid] = "passed"

    def counts(self):
        counts = collections.defaultdict(collections.Counter)
        for nodeid, outcome in self.outcome.items():
            for name in self.config._pygi_backend_of.get(nodeid, (UNMARKED,)):
                counts[name][outcome] += 1
        return counts

    def missing_required(self):
        if not self.outcome:  # nothing ran (collection error, --collect-only)
            return []
        counts = self.counts()
        return [n for n in self.config._pygi_required if counts[n]["passed"] == 0]


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and session.config._pygi_tally.missing_required():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tally = config._pygi_tally
    counts = tally.counts()
    parts = []
    for name in (*backends.NAMES, UNMARKED):
        c = counts.get(name, collections.Counter())
        text = ", ".join(f"{c[k]} {k}" for k in ("passed", "failed", "skipped") if c[k])
        parts.append(f"{name}: {text or 'no test'}")
    terminalreporter.write_line("tests per backend -- " + "; ".join(parts))
    missing = tally.missing_required()
    if missing:
        terminalreporter.write_line(
            f"FAILED: required backend(s) {missing} ({backends.REQUIRE_ENV}) passed no test",
            red=True)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state (reproducible failures)."""
    random.seed(0)
    if np is not None:
        np.random.seed(0)
    torch.manual_seed(0)
    yield
