#!/usr/bin/env python3
"""Run the CUDA kernels of this folder on the CPU (no GPU needed) and test them.

This is a debugging aid for machines without a GPU, not a substitute for the
GPU run (benchmarks/gpu_check.sh). It takes point_conv_cuda.cu and
point_conv_tiles.cuh *as they are*, turns them into plain C++ by text
substitution (CUDA qualifiers become no-ops, each block's threads become
std::threads, __syncthreads() a std::barrier, dynamic shared memory a
NaN-poisoned buffer with an overflow guard, `k<<<...>>>(args)` a call of
emu::launch; ATen CUDA calls become stubs of an H100-like device with 3
multiprocessors), builds it together with csrc/point_conv.cpp (schema and
checks) as a CPU-only pyg_implicit._C in a temporary copy of the package, and
runs tests/test_cuda_point_conv.py there with PYG_IMPLICIT_TEST_DEVICE=cpu as
backend ``cuda_emulated``, required (PYG_IMPLICIT_REQUIRE): nothing may skip.

What it checks: indexing, shared-memory layout and bounds, every code path of
the host logic (tiling, chunks, partial reductions, masks) and the numbers,
with real concurrency between barriers. What it cannot: warp-level behaviour,
real GPU memory, timing, cuBLAS on the device.

Usage: python csrc/cuda/emulate_on_cpu.py [--threads 96] [--workdir DIR] [pytest args...]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def generate(threads):
    tiles = open(os.path.join(HERE, "point_conv_tiles.cuh")).read()
    cu = open(os.path.join(HERE, "point_conv_cuda.cu")).read()
    tiles = tiles.replace("#include <cuda_runtime.h>", "")
    tiles = tiles.replace("constexpr int kThreads = 256;", f"constexpr int kThreads = {threads};")
    assert f"kThreads = {threads}" in tiles, "kThreads definition changed"
    cu = cu.replace('#include "point_conv_tiles.cuh"', tiles)
    for inc in ["<ATen/cuda/CUDAContext.h>", "<c10/cuda/CUDAException.h>",
                "<c10/cuda/CUDAGuard.h>"]:
        cu = cu.replace("#include " + inc, "")
    cu = cu.replace("x_src.is_cuda()", "true")
    old = "extern __shared__ __align__(16) unsigned char smem_raw[];"
    assert old in cu, "shared-memory declaration changed"
    cu = cu.replace(old, "unsigned char* smem_raw = emu::g_smem;")
    cu = cu.replace("TORCH_LIBRARY_IMPL(pyg_implicit, CUDA, m)",
                    "TORCH_LIBRARY_IMPL(pyg_implicit, CPU, m)")
    cu, n = re.subn(r"(\w+(?:<\w+>)?)<<<(.*?)>>>\(",
                    lambda m: f"emu::launch(emu::Cfg{{{m.group(2)}}}, {m.group(1)}, ", cu,
                    flags=re.S)
    assert n >= 1, "no kernel launch found"
    return PRELUDE + cu


PRELUDE = r'''
#include <ATen/ATen.h>
#include <barrier>
#include <thread>
#include <vector>
#include <cstring>
#include <cmath>
#include <atomic>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __grid_constant__
#define __restrict__ __restrict
struct EmuDim3 { unsigned x = 1, y = 1, z = 1; };
thread_local EmuDim3 threadIdx, blockIdx;
EmuDim3 blockDim, gridDim;
template <class A, class B> inline auto min(A a, B b) { return a < b ? a : b; }
template <class A, class B> inline auto max(A a, B b) { return a < b ? b : a; }
namespace emu {
unsigned char* g_smem = nullptr;
std::barrier<>* g_bar = nullptr;
std::atomic<long> g_sync_calls{0};
struct Cfg { unsigned grid; int threads; size_t smem; int stream; };
constexpr size_t kGuard = 4096;
template <class F, class... A>
void launch(Cfg c, F f, A... a) {
  TORCH_CHECK(c.grid >= 1 && c.threads >= 1, "emu: bad launch");
  gridDim.x = c.grid; blockDim.x = c.threads;
  std::vector<unsigned char> sm(c.smem + kGuard + 64);
  unsigned char* base = sm.data() + (16 - (reinterpret_cast<uintptr_t>(sm.data()) % 16)) % 16;
  for (unsigned b = 0; b < c.grid; ++b) {
    std::memset(base, 0xFF, c.smem + kGuard);  // NaN poison + guard
    g_smem = base;
    std::barrier<> bar(c.threads);
    g_bar = &bar;
    std::vector<std::thread> ts;
    for (int t = 0; t < c.threads; ++t)
      ts.emplace_back([=]() { threadIdx.x = t; blockIdx.x = b; f(a...); });
    for (auto& th : ts) th.join();
    for (size_t k = 0; k < kGuard; ++k)
      TORCH_CHECK(base[c.smem + k] == 0xFF, "emu: shared-memory overflow past ", c.smem, " bytes");
  }
}
}  // namespace emu
inline void __syncthreads() { emu::g_bar->arrive_and_wait(); }
enum EmuAttr { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <class F> inline int cudaFuncSetAttribute(F, EmuAttr, int v) {
  TORCH_CHECK(v <= 232448, "emu: smem over the H100 limit"); return 0; }
template <class F> inline int cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, F, int, size_t) { *n = 1; return 0; }
#define C10_CUDA_CHECK(x) TORCH_CHECK((x) == 0, "emu cuda call failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK() do {} while (0)
namespace at { namespace cuda {
struct EmuProp { size_t sharedMemPerBlockOptin = 232448; int multiProcessorCount = 3; };
inline const EmuProp* getCurrentDeviceProperties() { static EmuProp p; return &p; }
inline int getCurrentCUDAStream() { return 0; }
}}
namespace c10 { namespace cuda { struct CUDAGuard { explicit CUDAGuard(c10::Device) {} }; }}
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=96,
                    help="threads per block in the emulation (the GPU uses 256)")
    ap.add_argument("--workdir", default=None)
    args, pytest_args = ap.parse_known_args()
    import torch  # noqa: F401
    from torch.utils.cpp_extension import load

    work = args.workdir or tempfile.mkdtemp(prefix="pyg_implicit_cuda_emu_")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "point_conv_emu.cpp")
    with open(src, "w") as f:
        f.write(generate(args.threads))
    build = os.path.join(work, "build")
    os.makedirs(build, exist_ok=True)
    load(name="_C", sources=[os.path.join(ROOT, "csrc", "point_conv.cpp"), src],
         extra_include_paths=[os.path.join(ROOT, "csrc")],
         extra_cflags=["-O2", "-std=c++20", "-pthread"], extra_ldflags=["-pthread"],
         build_directory=build, is_python_module=False, verbose=False)
    pkg = os.path.join(work, "pkg")
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "pyg_implicit"), os.path.join(pkg, "pyg_implicit"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    import sysconfig
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    shutil.copy(os.path.join(build, "_C.so"), os.path.join(pkg, "pyg_implicit", "_C" + suffix))
    os.makedirs(os.path.join(pkg, "tests"), exist_ok=True)
    for name in ("test_cuda_point_conv.py", "conftest.py", "backends.py", "compare.py"):
        shutil.copy(os.path.join(ROOT, "tests", name), os.path.join(pkg, "tests"))
    # the emulated CUDA source must run: a skip of its tests fails the run
    env = dict(os.environ, PYG_IMPLICIT_TEST_DEVICE="cpu", PYG_IMPLICIT_CUDA_EMULATED="1",
               PYG_IMPLICIT_REQUIRE="cuda_emulated")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_cuda_point_conv.py",
           *pytest_args]
    print("emulated CUDA kernels:", " ".join(cmd), "in", pkg, flush=True)
    sys.exit(subprocess.call(cmd, cwd=pkg, env=env))


if __name__ == "__main__":
    main()
