#!/usr/bin/env python3
"""Run the CUDA kernels of this folder on the CPU (no GPU needed) and test them.

This is a debugging aid for machines without a GPU, not a substitute for the
GPU run (benchmarks/gpu_check.sh). It compiles point_conv_cuda.cu and
point_conv_tiles.cuh *as they are* as C++, with a force-included prelude
(emulated/prelude.h in the work folder) and stub CUDA headers placed first on
the include path: CUDA qualifiers become no-ops, each launch runs its blocks
one after another, the ``blockDim`` threads of a block (256, the GPU's
mapping) as fibers that run from one ``__syncthreads()`` to the next in an
order that alternates between phases (0..255, then 255..0: a read of what
another thread writes in the same phase, a missing barrier, sees the other
value in one of the two orders), a barrier reached by only some threads is an
error, dynamic shared memory is a NaN-poisoned buffer followed by a guard
that must stay intact, ATen's CUDA calls are stubs of an H100-like device
with 3 multiprocessors. The only source
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

What it checks: indexing, shared-memory layout and bounds, barrier placement,
every code path of the host logic (tiling, chunks, partial reductions, masks)
and the numbers. What it cannot: warp-level behaviour (no warp intrinsics
are used), real GPU memory, timing, cuBLAS on the device.

Usage: python csrc/cuda/emulate_on_cpu.py [--sanitize address|none] [--workdir DIR]
           [pytest args...]
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
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
#include <ucontext.h>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif
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
inline EmuDim3 threadIdx, blockIdx, blockDim, gridDim;
template <class A, class B> inline auto min(A a, B b) { return a < b ? a : b; }
template <class A, class B> inline auto max(A a, B b) { return a < b ? b : a; }
namespace emu {
constexpr size_t kSmemLimit = 232448;  // H100/H200 opt-in per block
constexpr size_t kGuard = 4096;
constexpr size_t kStack = 256 * 1024;  // per emulated thread
struct Cfg { unsigned grid; int threads; size_t smem; int stream; };
}  // namespace emu
// `extern __shared__ unsigned char smem_raw[];` inside the kernels names this.
namespace pyg_implicit_cuda {
alignas(128) inline unsigned char smem_raw[emu::kSmemLimit + emu::kGuard];
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

// The threads of a block are fibers on the calling thread. Each runs until
// its next __syncthreads() or its end; a barrier releases when every thread
// has reached it. The order in which threads run between two barriers
// alternates (0..n-1, then n-1..0), so a read of shared memory that another
// thread writes in the same phase (a missing __syncthreads()) sees the other
// value in one of the two orders: races show up deterministically.
// Context switch: a few instructions on x86-64 (callee-saved registers and
// the stack pointer), swapcontext elsewhere.
#if defined(__x86_64__)
extern "C" void pygi_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
  .weak pygi_emu_switch
  .type pygi_emu_switch, @function
pygi_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pygi_emu_switch, .-pygi_emu_switch
  .popsection
)");
struct Context {
  void* sp = nullptr;
};
#else
struct Context {
  ucontext_t uc;
};
#endif

struct Scheduler {
  Context main_ctx;
  std::vector<Context> ctx;
  std::vector<std::vector<char>> stacks;
  std::vector<int> state;  // 0 running, 1 at a barrier, 2 finished
  int current = -1;
  void (*invoke)(void*) = nullptr;  // runs the kernel body
  void* body = nullptr;
#if defined(__SANITIZE_ADDRESS__)
  void* fake_main = nullptr;
  const void* main_bottom = nullptr;  // the launching thread's stack
  size_t main_size = 0;
#endif
};
inline Scheduler* g_sched = nullptr;

inline void switch_to(Context& from, Context& to) {
#if defined(__x86_64__)
  pygi_emu_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

inline void to_main(Scheduler& s) {  // from a fiber back to the scheduler
#if defined(__SANITIZE_ADDRESS__)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(s.state[s.current] == 2 ? nullptr : &fake, s.main_bottom,
                                 s.main_size);
#endif
  switch_to(s.ctx[s.current], s.main_ctx);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake, &s.main_bottom, &s.main_size);
#endif
}

inline void to_fiber(Scheduler& s, int t) {  // from the scheduler into fiber t
  s.current = t;
  threadIdx.x = t;
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(&s.fake_main, s.stacks[t].data(), s.stacks[t].size());
#endif
  switch_to(s.main_ctx, s.ctx[t]);
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(s.fake_main, nullptr, nullptr);
#endif
}

inline void fiber_start() {  // first code of every fiber; never returns
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, &g_sched->main_bottom, &g_sched->main_size);
#endif
  g_sched->invoke(g_sched->body);
  g_sched->state[g_sched->current] = 2;
  to_main(*g_sched);
  std::abort();  // a finished fiber is never resumed
}

inline void make_fiber(Scheduler& s, int t) {
  char* base = s.stacks[t].data();
#if defined(__x86_64__)
  uintptr_t top = (reinterpret_cast<uintptr_t>(base) + s.stacks[t].size()) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                                       // fake return address
  *--sp = reinterpret_cast<void*>(&fiber_start);         // `ret` of the switch
  for (int r = 0; r < 6; ++r) *--sp = nullptr;           // rbp rbx r12..r15
  s.ctx[t].sp = sp;
#else
  getcontext(&s.ctx[t].uc);
  s.ctx[t].uc.uc_stack.ss_sp = base;
  s.ctx[t].uc.uc_stack.ss_size = s.stacks[t].size();
  s.ctx[t].uc.uc_link = nullptr;
  makecontext(&s.ctx[t].uc, fiber_start, 0);
#endif
}

template <class F, class... A>
void launch(Cfg c, F f, A... a) {
  TORCH_CHECK(c.grid >= 1 && c.threads >= 1 && c.threads <= 1024, "emu: bad launch");
  TORCH_CHECK(c.smem <= kSmemLimit, "emu: dynamic shared memory ", c.smem,
              " over the device limit");
  gridDim.x = c.grid;
  blockDim.x = c.threads;
  auto body = [&]() { f(a...); };
  Scheduler s;
  s.body = &body;
  s.invoke = [](void* b) { (*static_cast<decltype(body)*>(b))(); };
  g_sched = &s;
  const int n = c.threads;
  s.ctx.resize(n);
  s.stacks.assign(n, std::vector<char>(kStack));
  s.state.assign(n, 0);
  for (unsigned b = 0; b < c.grid; ++b) {
    blockIdx.x = b;
    poison(c.smem);
    for (int t = 0; t < n; ++t) {
      make_fiber(s, t);
      s.state[t] = 0;
    }
    for (int phase = 0;; ++phase) {
      for (int k = 0; k < n; ++k) {
        const int t = phase % 2 == 0 ? k : n - 1 - k;
        if (s.state[t] == 0) to_fiber(s, t);
      }
      int at_barrier = 0, finished = 0;
      for (int t = 0; t < n; ++t) (s.state[t] == 1 ? at_barrier : finished) += 1;
      if (finished == n) break;
      TORCH_CHECK(finished == 0, "emu: __syncthreads() reached by ", at_barrier, " of ", n,
                  " threads of block ", b, " while the others returned (divergent barrier)");
      for (int t = 0; t < n; ++t) s.state[t] = 0;  // release the barrier
    }
    TORCH_CHECK(guard_intact(c.smem), "emu: shared-memory overflow past ", c.smem, " bytes");
  }
  g_sched = nullptr;
}
}  // namespace emu
inline void __syncthreads() {
  emu::g_sched->state[emu::g_sched->current] = 1;
  emu::to_main(*emu::g_sched);
}
// A warp barrier as a block barrier: right when every thread of the block
// calls __syncwarp() equally often (what the kernels do; a mismatch is the
// divergent-barrier error above).
inline void __syncwarp(unsigned = 0xffffffffu) { __syncthreads(); }
'''

STUBS = {
    "cuda_runtime.h": r'''#pragma once
struct alignas(8) float2 { float x, y; };
struct alignas(16) double2 { double x, y; };
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
    # wmma with every lane holding the whole tile (the results are those of the
    # warp-wide operation; element order inside a fragment is not modelled)
    "mma.h": r'''#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {};
struct row_major {}; struct col_major {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment;
template <int M, int N, int K, class L>
struct fragment<matrix_a, M, N, K, precision::tf32, L> {
  static constexpr int num_elements = M * K; float x[M * K]; };
template <int M, int N, int K, class L>
struct fragment<matrix_b, M, N, K, precision::tf32, L> {
  static constexpr int num_elements = K * N; float x[K * N]; };
template <int M, int N, int K>
struct fragment<accumulator, M, N, K, float, void> {
  static constexpr int num_elements = M * N; float x[M * N]; };
inline void check_aligned(const void* p) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 32 == 0, "emu: wmma pointer not 32-byte aligned");
}
inline float __float_to_tf32(float v) {  // round to nearest (ties away), 10 mantissa bits
  uint32_t u; std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) { u += 0x1000u; u &= 0xffffe000u; }
  std::memcpy(&v, &u, 4); return v;
}
template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float v) { for (auto& e : f.x) e = v; }
template <int M, int N, int K, class L>
void load_matrix_sync(fragment<matrix_a, M, N, K, precision::tf32, L>& f, const float* p,
                      unsigned ld) {
  static_assert(std::is_same<L, row_major>::value, "emu: row_major only");
  check_aligned(p);
  for (int i = 0; i < M; ++i) for (int k = 0; k < K; ++k) f.x[i * K + k] = p[i * ld + k];
}
template <int M, int N, int K, class L>
void load_matrix_sync(fragment<matrix_b, M, N, K, precision::tf32, L>& f, const float* p,
                      unsigned ld) {
  static_assert(std::is_same<L, row_major>::value, "emu: row_major only");
  check_aligned(p);
  for (int k = 0; k < K; ++k) for (int n = 0; n < N; ++n) f.x[k * N + n] = p[k * ld + n];
}
template <int M, int N, int K, class LA, class LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
              const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int n = 0; n < N; ++n) {
      float v = c.x[i * N + n];
      for (int k = 0; k < K; ++k) v += a.x[i * K + k] * b.x[k * N + n];
      out[i * N + n] = v;
    }
  std::memcpy(d.x, out, sizeof(out));
}
template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld,
                       layout_t layout) {
  TORCH_CHECK(layout == mem_row_major, "emu: mem_row_major only");
  check_aligned(p);
  for (int i = 0; i < M; ++i) for (int n = 0; n < N; ++n) p[i * ld + n] = f.x[i * N + n];
}
}}  // namespace nvcuda::wmma
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
    # (no strict aliasing: the kernels read float2/double2 views of float/double rows)
    flags = ["-O1" if args.sanitize == "address" else "-O2", "-std=c++20", "-pthread",
             "-fno-strict-aliasing",
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
    asan_log = os.path.join(work, "asan")
    if args.sanitize == "address":
        # pytest captures stderr, and an ASan abort loses what it captured: the
        # reports go to files, printed below
        env["ASAN_OPTIONS"] = f"{env.get('ASAN_OPTIONS', '')}:log_path={asan_log}".lstrip(":")
    print(f"emulated CUDA kernels (sanitizer: {args.sanitize}):", " ".join(cmd), "in", pkg,
          flush=True)
    rc = subprocess.call(cmd, cwd=pkg, env=env)
    reports = sorted(glob.glob(asan_log + ".*"))
    for path in reports:
        with open(path, errors="replace") as f:
            print(f"---- AddressSanitizer report {path} ----\n{f.read()}", flush=True)
    sys.exit(rc if rc or not reports else 1)


if __name__ == "__main__":
    main()
