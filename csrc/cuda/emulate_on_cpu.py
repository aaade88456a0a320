#!/usr/bin/env python3
"""Run the CUDA kernels of this folder on the CPU (no GPU needed) and test them.

This is a debugging aid for machines without a GPU, not a substitute for the
GPU run (benchmarks/gpu_check.sh). It compiles point_conv_cuda.cu and
point_conv_tiles.cuh *as they are* as C++, with a force-included prelude
(emulated/prelude.h in the work folder) and stub CUDA headers placed first on
the include path: CUDA qualifiers become no-ops, each launch runs its blocks
one after another on a pool of ``blockDim`` std::threads (256, the GPU's
mapping), ``__syncthreads()`` is a std::barrier, dynamic shared memory a
NaN-poisoned buffer followed by a guard that must stay intact, ATen's CUDA
calls stubs of an H100-like device with 3 multiprocessors. The only source
rewrites are syntax C++ lacks, found by regular expressions: a launch
``k<<<...>>>(args)`` becomes ``emu::launch(...)``, the CUDA dispatch key of the
registration becomes CPU, ``t.is_cuda()`` becomes true.

By default the build uses AddressSanitizer (``--sanitize address``; the run
re-executes itself with libasan preloaded): an out-of-bounds access to any
global (ATen-allocated) memory fails the run with a report, deterministically;
shared-memory overflows are caught by the guard, reads of never-written
shared memory show up as NaN. It is built together with csrc/point_conv.cpp
(schema and checks) as a CPU-only pyg_implicit._C in a temporary copy of the
package, and runs tests/test_fused_op.py there as backend ``cuda_emulated``,
required (PYG_IMPLICIT_REQUIRE): nothing of it may skip. ThreadSanitizer is
not used (it cannot run inside an uninstrumented CPython with torch).

What it checks: indexing, shared-memory layout and bounds, every code path of
the host logic (tiling, chunks, partial reductions, masks) and the numbers,
with real concurrency between barriers. What it cannot: warp-level behaviour,
real GPU memory, timing, cuBLAS on the device.

Usage: python csrc/cuda/emulate_on_cpu.py [--sanitize address|none] [--workdir DIR]
           [pytest args...]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCES = ("point_conv_cuda.cu", "point_conv_tiles.cuh")
TEST_FILES = ("test_fused_op.py", "op_cases.py", "conftest.py", "backends.py", "compare.py")

LAUNCH = re.compile(r"([A-Za-z_]\w*(?:\s*<\s*\w+\s*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
IMPL_KEY = re.compile(r"TORCH_LIBRARY_IMPL\s*\(\s*pyg_implicit\s*,\s*CUDA\s*,")
IS_CUDA = re.compile(r"\b\w+\s*\.\s*is_cuda\s*\(\s*\)")


def translate(cu: str) -> str:
    """The CUDA-only syntax of a .cu file rewritten as C++ for the emulation."""
    cu, launches = LAUNCH.subn(
        lambda m: f"emu::launch(emu::Cfg{{{m.group(2)}}}, {m.group(1)}, ", cu)
    cu, keys = IMPL_KEY.subn("TORCH_LIBRARY_IMPL(pyg_implicit, CPU,", cu)
    cu = IS_CUDA.sub("true", cu)
    if launches == 0 or keys != 1:
        raise SystemExit(f"emulate_on_cpu: found {launches} kernel launches and {keys} "
                         f"CUDA registrations in point_conv_cuda.cu (expected >= 1 and 1)")
    return cu


PRELUDE = r'''// Force-included before the CUDA source in the CPU emulation.
#pragma once
#include <ATen/ATen.h>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __host__
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __grid_constant__
#define __restrict__ __restrict
struct EmuDim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 blockDim, gridDim;
template <class A, class B> inline auto min(A a, B b) { return a < b ? a : b; }
template <class A, class B> inline auto max(A a, B b) { return a < b ? b : a; }
namespace emu {
constexpr size_t kSmemLimit = 232448;  // H100/H200 opt-in per block
constexpr size_t kGuard = 4096;
inline std::barrier<>* g_bar = nullptr;
struct Cfg { unsigned grid; int threads; size_t smem; int stream; };
}  // namespace emu
// `extern __shared__ unsigned char smem_raw[];` inside the kernels names this.
namespace pyg_implicit_cuda {
alignas(16) inline unsigned char smem_raw[emu::kSmemLimit + emu::kGuard];
}
namespace emu {
inline void poison(size_t smem) {
  std::memset(pyg_implicit_cuda::smem_raw, 0xFF, smem + kGuard);  // NaN + guard
}
inline bool guard_intact(size_t smem) {
  for (size_t k = 0; k < kGuard; ++k)
    if (pyg_implicit_cuda::smem_raw[smem + k] != 0xFF) return false;
  return true;
}
// Blocks run one after another on one pool of c.threads threads.
template <class F, class... A>
void launch(Cfg c, F f, A... a) {
  TORCH_CHECK(c.grid >= 1 && c.threads >= 1 && c.threads <= 1024, "emu: bad launch");
  TORCH_CHECK(c.smem <= kSmemLimit, "emu: dynamic shared memory ", c.smem,
              " over the device limit");
  gridDim.x = c.grid;
  blockDim.x = c.threads;
  std::barrier<> bar(c.threads);
  g_bar = &bar;
  std::atomic<bool> overflow{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < c.threads; ++t) {
    pool.emplace_back([&, t]() {
      threadIdx.x = t;
      for (unsigned b = 0; b < c.grid; ++b) {
        if (t == 0) {
          if (b > 0 && !guard_intact(c.smem)) overflow = true;
          poison(c.smem);
        }
        bar.arrive_and_wait();
        blockIdx.x = b;
        f(a...);
        bar.arrive_and_wait();
      }
      if (t == 0 && !guard_intact(c.smem)) overflow = true;
    });
  }
  for (auto& th : pool) th.join();
  g_bar = nullptr;
  TORCH_CHECK(!overflow, "emu: shared-memory overflow past ", c.smem, " bytes");
}
}  // namespace emu
inline void __syncthreads() { emu::g_bar->arrive_and_wait(); }
'''

STUBS = {
    "cuda_runtime.h": r'''#pragma once
enum EmuAttr { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <class F> inline int cudaFuncSetAttribute(F, EmuAttr, int v) {
  TORCH_CHECK(v >= 0 && (size_t)v <= emu::kSmemLimit, "emu: smem over the H100 limit");
  return 0;
}
template <class F>
inline int cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t smem) {
  TORCH_CHECK(smem <= emu::kSmemLimit, "emu: occupancy query over the smem limit");
  *n = 1;
  return 0;
}
''',
    "ATen/cuda/CUDAContext.h": r'''#pragma once
#include <cuda_runtime.h>
namespace at { namespace cuda {
struct EmuProp {
  size_t sharedMemPerBlockOptin = emu::kSmemLimit;
  int multiProcessorCount = 3;
  int maxThreadsPerMultiProcessor = 2048;
};
inline const EmuProp* getCurrentDeviceProperties() { static EmuProp p; return &p; }
inline int getCurrentCUDAStream() { return 0; }
}}  // namespace at::cuda
''',
    "c10/cuda/CUDAException.h": r'''#pragma once
#define C10_CUDA_CHECK(x) TORCH_CHECK((x) == 0, "emu cuda call failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK() do {} while (0)
''',
    "c10/cuda/CUDAGuard.h": r'''#pragma once
namespace c10 { namespace cuda { struct CUDAGuard { explicit CUDAGuard(c10::Device) {} }; }}
''',
}


def write_sources(work: str) -> str:
    """The emulation's sources in ``work``; returns the translated .cpp path."""
    inc = os.path.join(work, "emulated")
    for rel, text in {"prelude.h": PRELUDE, **STUBS}.items():
        path = os.path.join(inc, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    shutil.copy(os.path.join(HERE, "point_conv_tiles.cuh"), inc)
    src = os.path.join(work, "point_conv_emu.cpp")
    with open(os.path.join(HERE, "point_conv_cuda.cu")) as f:
        cu = f.read()
    with open(src, "w") as f:
        f.write(translate(cu))
    return src


def asan_preload() -> str:
    """LD_PRELOAD for an ASan-instrumented extension in an uninstrumented python:
    the ASan runtime first, then libstdc++ (python does not link it; ASan must
    see it at start-up to intercept C++ exceptions)."""
    libs = []
    for name in ("libasan.so", "libstdc++.so.6"):
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True,
                              text=True).stdout.strip()
        if not path or not os.path.exists(path):
            raise SystemExit(f"emulate_on_cpu: --sanitize address needs gcc's {name} "
                             f"(Debian: libasan8, libstdc++6); or pass --sanitize none")
        libs.append(os.path.realpath(path))
    return " ".join(libs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sanitize", choices=["address", "none"], default="address")
    ap.add_argument("--workdir", default=None)
    args, pytest_args = ap.parse_known_args()

    env = dict(os.environ)
    if args.sanitize == "address":
        preload = asan_preload()
        if env.get("LD_PRELOAD", "") != preload:
            # the instrumented _C needs the ASan runtime loaded first: start again
            env["LD_PRELOAD"] = preload
            env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__),
                                       *sys.argv[1:]], env)

    import torch  # noqa: F401
    from torch.utils.cpp_extension import load

    work = args.workdir or tempfile.mkdtemp(prefix="pyg_implicit_cuda_emu_")
    os.makedirs(work, exist_ok=True)
    src = write_sources(work)
    build = os.path.join(work, "build")
    os.makedirs(build, exist_ok=True)
    flags = ["-O1" if args.sanitize == "address" else "-O2", "-std=c++20", "-pthread",
             "-include", os.path.join(work, "emulated", "prelude.h")]
    ldflags = ["-pthread"]
    if args.sanitize == "address":
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        ldflags += ["-fsanitize=address"]
    load(name="_C", sources=[os.path.join(ROOT, "csrc", "point_conv.cpp"), src],
         extra_include_paths=[os.path.join(work, "emulated"), os.path.join(ROOT, "csrc")],
         extra_cflags=flags, extra_ldflags=ldflags, build_directory=build,
         is_python_module=False, verbose=False)
    pkg = os.path.join(work, "pkg")
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "pyg_implicit"), os.path.join(pkg, "pyg_implicit"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    shutil.copy(os.path.join(build, "_C.so"), os.path.join(pkg, "pyg_implicit", "_C" + suffix))
    os.makedirs(os.path.join(pkg, "tests"), exist_ok=True)
    for name in TEST_FILES:
        shutil.copy(os.path.join(ROOT, "tests", name), os.path.join(pkg, "tests"))
    # the emulated CUDA source must run: a skip of its tests fails the run
    env.update(PYG_IMPLICIT_CUDA_EMULATED="1", PYG_IMPLICIT_REQUIRE="cuda_emulated",
               HYPOTHESIS_PROFILE=env.get("HYPOTHESIS_PROFILE", "quick"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "tests/test_fused_op.py", "-k", "cuda_emulated", *pytest_args]
    print(f"emulated CUDA kernels (sanitizer: {args.sanitize}):", " ".join(cmd), "in", pkg,
          flush=True)
    sys.exit(subprocess.call(cmd, cwd=pkg, env=env))


if __name__ == "__main__":
    main()
