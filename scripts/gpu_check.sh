#!/usr/bin/env bash
# The prepared run for a lent GPU machine (device time is scarce: one call does everything, logs and results under
# $OUT): builds the package against the machine's torch, runs the CUDA tests and the cost-model tests, then the GPU
# benchmark (benchmarks/gpu.py), and prints a short summary last.
#
#   here, once:     bash scripts/gpu_check.sh --prepare   # nlohmann-json headers into .deps/ (the device has no
#                                                         # network); then the device run carries .deps
#   on the device:  bash scripts/gpu_check.sh             # e.g. the run tool with carry [".deps"], timeout ~540 s
#
# Without a GPU the same steps run with the benchmark's --smoke: a dry run of this script (GPU_CHECK_SKIP_BUILD=1
# uses the package already importable instead of building one).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
if [ "${1:-}" = "--prepare" ]; then
  rm -rf .deps && mkdir -p .deps
  (cd .deps && apt-get download nlohmann-json3-dev >/dev/null && dpkg -x nlohmann-json3-dev_*.deb .) || exit 1
  echo "nlohmann-json headers in .deps/usr/include/nlohmann: carry .deps to the device"
  exit 0
fi
out=${OUT:-out/gpu-check}
mkdir -p "$out"
began=$(date +%s)
log() { printf '[gpu-check %4ss] %s\n' "$(( $(date +%s) - began ))" "$*" | tee -a "$out/summary.txt"; }
status=0

if [ -z "${GPU_CHECK_SKIP_BUILD:-}" ]; then
  [ -d .deps/usr/include/nlohmann ] || log "warning: no .deps/usr/include/nlohmann (run --prepare here and carry .deps)"
  log "building against $($python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
  site="$PWD/.gpu-site"
  if ! $python -m pip install --no-build-isolation --no-deps --upgrade --target "$site" . \
      -C cmake.define.CMAKE_PREFIX_PATH="$PWD/.deps/usr" >"$out/build.log" 2>&1; then
    log "build failed; the end of build.log:"
    tail -40 "$out/build.log" | tee -a "$out/summary.txt"
    exit 1
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
$python -c 'import fourierft, torch; print("fourierft from", fourierft.__file__, "| CUDA:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")' | tee -a "$out/summary.txt"

log "tests: tests/python/test_cuda.py tests/python/test_routes.py"
$python -m pytest -q -p no:cacheprovider tests/python/test_cuda.py tests/python/test_routes.py >"$out/tests.log" 2>&1 ||
  status=1
tail -2 "$out/tests.log" | tee -a "$out/summary.txt"

smoke=""
$python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || smoke="--smoke"
log "benchmark: benchmarks/gpu.py $smoke --out $out/benchmarks-gpu.md"
bench_status=0
$python benchmarks/gpu.py $smoke --out "$out/benchmarks-gpu.md" >"$out/benchmark.log" 2>&1 || bench_status=1
if [ $bench_status -ne 0 ]; then
  status=1
  log "benchmark failed; the end of benchmark.log:"
  tail -30 "$out/benchmark.log" | tee -a "$out/summary.txt"
else
  sed -n '/^## Training/,$p' "$out/benchmark.log" | grep -v '^(smoke' | tee -a "$out/summary.txt"
fi
log "done, status $status (logs: $out)"
exit $status
