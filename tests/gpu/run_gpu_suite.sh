#!/usr/bin/env bash
# The GPU check in one command, for a machine with a CUDA GPU, nvcc and a CUDA build of torch:
# builds obd_fast._C with CUDA in place, runs tests/gpu, the GPU benchmark and the
# compute-sanitizer memcheck case, each under its own time limit. Logs go to $OUT (default
# ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
export OBD_FAST_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
start=$(date +%s)
if ! $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  grep -E "error|Error" -A4 "$OUT/build.log" | head -80
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
$PY -c "import obd_fast; print('obd_fast build:', obd_fast.build_info())"
PYTEST="$PY -m pytest tests/gpu -v -s -p no:cacheprovider -o addopts="
stage() {  # name, limit in seconds, command...: run with a limit, log to $OUT/name.log, say how long
  local name=$1 limit=$2 t0=$(date +%s)
  shift 2
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc, $(( $(date +%s) - t0 )) s"
  return "$rc"
}
stage gpu_tests "${TEST_TIMEOUT:-240}" $PYTEST -k "not memcheck"
tests_rc=$?
stage gpu_bench "${BENCH_TIMEOUT:-240}" $PY benchmarks/gpu_meta_gradient.py --json "$OUT/gpu_bench.json"
# compute-sanitizer last: slow to start, and it must not starve the rest of the time.
stage gpu_memcheck "${MEMCHECK_TIMEOUT:-200}" $PYTEST -k memcheck
memcheck_rc=$?
echo "tests rc=$tests_rc memcheck rc=$memcheck_rc"
exit $(( tests_rc || memcheck_rc ))
