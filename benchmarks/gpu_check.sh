#!/usr/bin/env bash
# One-command GPU verification of the fused CUDA point convolution.
#
#   bash benchmarks/gpu_check.sh [--full] [build|smoke|test|sanitize|bench]...   (default: all)
#
# For a fresh GPU machine (python3 with torch+CUDA, nvcc, pytest; no escnn,
# torch-scatter or torch-cluster needed). Stages, each under its own timeout, in
# this order (estimated minutes on an H100/H200 with 16 cores; not yet measured):
#   build     ~3   pyg_implicit._C in place, FORCE_CUDA=1, sm_90, ptxas -v report
#   smoke     <1   CUDA kernels registered; a tiny forward on CUDA == the CPU kernels;
#                  the launch report (edge tile, shared memory, blocks/SM, grid, chunks)
#   test      ~2   tests/test_fused_op.py on the cuda backend (and the 300k-edge CUDA vs
#                  CPU cross-check), backends cuda + fused_cpu required
#   sanitize  ~1   compute-sanitizer memcheck on a small case (--full: + racecheck, synccheck)
#   bench     ~2   bench_gpu.py: configurations M and L, reference/factorized at M only,
#                  the peers e3nn and cuEquivariance where installed (--peers),
#                  5 repetitions (--full: all configurations, max-E search, edge-tile sweep,
#                  and A/B runs: A_i in the workspace (PYG_IMPLICIT_CUDA_ACC_REGS=0), TF32
#                  tensor cores (PYG_IMPLICIT_CUDA_TF32=1, error vs factorized reported))
# Default total about 8 minutes. Logs go to $OUT (when set) as each stage runs, and to
# benchmarks/results/; results carry the GPU model in their names.
# Environment: PY (python, default python3), MAX_JOBS, BENCH_ARGS (replace the bench
# arguments), PYTEST_ARGS, T_BUILD/T_SMOKE/T_TEST/T_SANITIZE/T_BENCH (timeouts, s).
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PY:-python3}
RESULTS=$ROOT/benchmarks/results
mkdir -p "$RESULTS"
FULL=0
STAGES=()
for a in "$@"; do
  case $a in
    --full) FULL=1 ;;
    build|smoke|test|sanitize|bench|all) STAGES+=("$a") ;;
    *) echo "gpu_check.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(all)
want() {
  local s
  for s in "${STAGES[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done
  return 1
}

# the log is written where it survives a killed command: $OUT first
LOGDIR=${OUT:-$RESULTS}
mkdir -p "$LOGDIR"
LOG=$LOGDIR/gpu_check.log
: >"$LOG"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

declare -A STATUS
ORDER=()
log() { echo "[gpu_check] $*" | tee -a "$LOG"; }
run_stage() {  # name, timeout (s), command...
  local name=$1 limit=$2; shift 2
  ORDER+=("$name")
  log "---- $name (timeout ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && log "---- $name TIMED OUT after ${limit}s"
  STATUS[$name]="rc=$rc ($((SECONDS - t0)) s)"
  log "---- $name finished: ${STATUS[$name]}"
  return "$rc"
}
copy_results() {  # GPU-model-tagged copies of what the run produced
  local tag f base
  tag=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 \
        | tr -c 'A-Za-z0-9\n' '_' | sed 's/_*$//')
  tag=${tag:-unknown_gpu}
  for f in "$RESULTS"/gpu_bench.json "$RESULTS"/gpu_bench.md "$RESULTS"/pytest_cuda.xml \
           "$RESULTS"/gpu_bench_acc_regs_off.json "$RESULTS"/gpu_bench_acc_regs_off.md \
           "$RESULTS"/gpu_bench_tf32.json "$RESULTS"/gpu_bench_tf32.md \
           "$LOGDIR"/sanitizer.log "$LOGDIR"/ptxas.txt "$LOG"; do
    [ -f "$f" ] || continue
    base=$(basename "$f"); base="${base%.*}_${tag}.${base##*.}"
    cp -f "$f" "$RESULTS/$base" 2>/dev/null || true
    [ -n "${OUT:-}" ] && cp -f "$f" "$OUT/$base" 2>/dev/null || true
  done
}
trap copy_results EXIT

log "host: $(hostname) $(uname -m); $(date -u); full=$FULL"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

# CUDA toolkit: one place decides (csrc/find_cuda_home.py); fail fast without one
if ! CUDA_HOME=$($PY csrc/find_cuda_home.py 2> >(tee -a "$LOG" >&2)); then
  log "FAILED: no usable CUDA toolkit (see above); set CUDA_HOME"
  exit 1
fi
export CUDA_HOME PATH=$CUDA_HOME/bin:$PATH
log "CUDA_HOME=$CUDA_HOME ($(nvcc --version 2>/dev/null | tail -1))"

# ---------------------------------------------------------------- build
if want build; then
  run_stage build "${T_BUILD:-420}" env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
    PYG_IMPLICIT_PTXAS_VERBOSE=1 MAX_JOBS=${MAX_JOBS:-16} "$PY" setup.py build_ext --inplace
  grep -aE "ptxas info|bytes stack frame|spill" "$LOG" >"$LOGDIR/ptxas.txt" || true
fi

# ---------------------------------------------------------------- smoke (no escnn)
if want smoke; then
  run_stage smoke "${T_SMOKE:-120}" env PYG_IMPLICIT_CUDA_REPORT=1 "$PY" - <<'PYEOF'
import sys, torch
import pyg_implicit.ops as ops
print("pyg_implicit._C loaded:", ops.is_available(), ops.unavailable_reason())
has = {k: torch._C._dispatch_has_kernel_for_dispatch_key("pyg_implicit::point_conv_forward", k)
       for k in ("CPU", "CUDA")} if ops.is_available() else {}
print("kernels:", has)
assert "escnn" not in sys.modules, "the fused path imported escnn"
if not (ops.is_available() and has.get("CUDA") and torch.cuda.is_available()):
    sys.exit("smoke: no CUDA kernels or no GPU")
sys.path.insert(0, "tests")
from op_cases import fused_with_grads, random_problem
prob = random_problem(n_src=30, n_dst=20, num_edges=80, hub_degree=50)
g = torch.randn(20, prob[5].out_channels, dtype=torch.float64)
out_c = fused_with_grads(prob, "cpu", g)[0]
out_g = fused_with_grads(prob, "cuda", g)[0]
torch.cuda.synchronize()
err = float((out_g - out_c).norm() / out_c.norm())
print(f"smoke: CUDA vs CPU forward relative error {err:.2e}")
sys.exit(0 if err <= 1e-10 else 1)
PYEOF
fi

# ---------------------------------------------------------------- tests
if want test; then
  # the CUDA kernels must run: their tests fail instead of skipping when the GPU
  # or the CUDA build is missing (tests/conftest.py); fused_cpu for the comparison
  run_stage test "${T_TEST:-300}" env PYG_IMPLICIT_REQUIRE=cuda,fused_cpu "$PY" -m pytest \
    -q -rs -p no:cacheprovider tests/test_fused_op.py -k "not fused_cpu and not cuda_emulated" \
    --junitxml="$RESULTS/pytest_cuda.xml" ${PYTEST_ARGS:-}
  TALLY=$(grep -a "tests per backend" "$LOG" | tail -1)
  log "${TALLY:-tests per backend: (no summary line: pytest did not finish)}"
fi

# ---------------------------------------------------------------- sanitizer
if want sanitize; then
  CASE=$(mktemp /tmp/pyg_implicit_sanitize_XXXX.py)
  cat >"$CASE" <<'PYEOF'
# Small fused forward+backward (float32 and float64) for compute-sanitizer:
# degree-0 targets, one target with several edge tiles, edge attributes,
# Fourier and pointwise layers, several row chunks.
import os, sys
import torch
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests")]
from op_cases import fused_with_grads, random_problem
os.environ["PYG_IMPLICIT_CUDA_WS_MB"] = "1"
for dtype in (torch.float32, torch.float64):
    prob = random_problem(n_src=20, n_dst=15, num_edges=45, hub_degree=40, n_isolated=2,
                          c_in=48)
    g = torch.randn(15, prob[5].out_channels, dtype=torch.float64)
    res = fused_with_grads(prob, "cuda", g, dtype)
    torch.cuda.synchronize()
    assert all(torch.isfinite(t).all() for t in res if t is not None)
print("sanitize case done")
PYEOF
  if command -v compute-sanitizer >/dev/null 2>&1; then
    : >"$LOGDIR/sanitizer.log"
    TOOLS=(memcheck)
    [ "$FULL" = 1 ] && TOOLS+=(racecheck synccheck)
    for tool in "${TOOLS[@]}"; do
      run_stage "sanitize-$tool" "${T_SANITIZE:-240}" compute-sanitizer --tool "$tool" \
        --error-exitcode 1 --target-processes all "$PY" "$CASE"
      grep -aE "ERROR SUMMARY|RACECHECK SUMMARY|Device not supported|sanitize case done" "$LOG" \
        | tail -3 >>"$LOGDIR/sanitizer.log"
    done
  else
    log "compute-sanitizer not found; skipped"
    STATUS[sanitize]="skipped (no compute-sanitizer)"; ORDER+=(sanitize)
  fi
  rm -f "$CASE"
fi

# ---------------------------------------------------------------- benchmark
if want bench; then
  if [ "$FULL" = 1 ]; then
    DEFAULT_BENCH="--configs M,L,2D --peers"
  else
    DEFAULT_BENCH="--configs M,L --unfused-configs M --no-max-e --no-te-sweep --reps 5 --peers"
  fi
  # shellcheck disable=SC2086
  run_stage bench "${T_BENCH:-240}" "$PY" benchmarks/bench_gpu.py ${BENCH_ARGS:-$DEFAULT_BENCH}
  if [ "$FULL" = 1 ]; then  # A/B runs: A_i in the workspace; TF32 tensor cores
    run_stage bench-acc-regs-off "${T_BENCH:-240}" env PYG_IMPLICIT_CUDA_ACC_REGS=0 "$PY" \
      benchmarks/bench_gpu.py --configs M,L --variants fused --no-max-e --no-te-sweep \
      --reps 5 --tag acc_regs_off
    run_stage bench-tf32 "${T_BENCH:-240}" env PYG_IMPLICIT_CUDA_TF32=1 "$PY" \
      benchmarks/bench_gpu.py --configs M,L --variants factorized,fused --unfused-configs M \
      --no-max-e --no-te-sweep --reps 5 --tag tf32
  fi
fi

log "==== summary"
for k in "${ORDER[@]}"; do log "$k: ${STATUS[$k]}"; done
[ -n "${TALLY:-}" ] && log "$TALLY"
[ -f "$RESULTS/gpu_bench.md" ] && want bench && cat "$RESULTS/gpu_bench.md" | tee -a "$LOG"
FAIL=0
for k in "${ORDER[@]}"; do case ${STATUS[$k]} in rc=0*|skipped*) ;; *) FAIL=1 ;; esac; done
exit $FAIL
