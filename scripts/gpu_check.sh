#!/usr/bin/env bash
# GPU check for a borrowed CUDA machine without internet: install the carried wheels, print the
# versions, run the GPU tests and the GPU benchmark, and leave every log in $OUT.
#
#   bash scripts/gpu_check.sh                      # on the GPU machine (OUT set by the caller)
#   PYTHON=.venv/bin/python OUT=/tmp/gc bash scripts/gpu_check.sh   # CPU dry run: tests skip,
#                                                  # the benchmark says "no CUDA device"
#
# Inputs: .whl/*.whl (git-ignored; hydra-core, omegaconf, antlr4-python3-runtime and a cp312
# pykdtree wheel: the GPU machine lacks them) and optionally .whl/scan_00_000000.bin (a real
# scan for the benchmark). A wheel that fails to install is reported and skipped.
# Budget: ~6 minutes in all; each stage has its own timeout, and the optional torch.compile
# benchmark runs only when time is left. Test runs set PCSEG_TRITON_AUTOTUNE=0 (one kernel
# config per shape: correctness, not speed); the benchmark autotunes.
# Outputs in $OUT (default ./gpu_out): gpu_check.log (summary), versions.txt, pip.log,
# pytest.log, bench.log, bench_gpu.txt, bench_gpu.json, bench_compile.log.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SITE="${PCSEG_SITE:-/tmp/site}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-330}"
START=$SECONDS
STATUS=0

log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$OUT/gpu_check.log"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

# 1. wheels -> $SITE, one at a time so that one bad wheel does not block the others; without
#    pip, each wheel (a zip) is unpacked into $SITE instead
mkdir -p "$SITE"
have_pip=1
"$PY" -m pip --version >/dev/null 2>&1 || have_pip=0
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  log "no wheels in .whl/ (carry .whl to the machine); using what is installed"
fi
for w in "${wheels[@]}"; do
  if [ $have_pip -eq 1 ] && "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --target "$SITE" "$w" >>"$OUT/pip.log" 2>&1; then
    log "installed $(basename "$w")"
  elif [ $have_pip -eq 0 ] && "$PY" -m zipfile -e "$w" "$SITE" >>"$OUT/pip.log" 2>&1; then
    log "no pip: unpacked $(basename "$w") into $SITE"
  else
    log "WARNING: could not install $(basename "$w") (see pip.log); continuing"
  fi
done
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

# 2. versions
{
  echo "date: $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not found"
  "$PY" - <<'EOF'
import importlib, sys
import torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for name in ("triton", "pytorch_lightning", "hydra", "omegaconf", "pykdtree", "open3d", "numpy"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"), "from", getattr(mod, "__file__", "?"))
    except Exception as exc:
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
EOF
} >"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt" | tee -a "$OUT/gpu_check.log" >/dev/null
log "versions written ($(grep -E '^(torch|triton|device) ' "$OUT/versions.txt" | tr '\n' ';'))"

# 3. tests: the precision tests first, then the rest of tests/ops (the gpu-marked CUDA tests,
#    the Triton kernels on CUDA, the continuous conv and KNN suites); not the slow ones
files=(tests/ops/test_precision.py tests/test_mixed_precision.py)
for f in tests/ops/test_*.py; do
  [ "$f" != tests/ops/test_precision.py ] && files+=("$f")
done
t=$(($(left) - 150))
[ "$t" -gt 150 ] && t=150
[ "$t" -lt 60 ] && t=60
log "pytest (timeout ${t}s): ${files[*]}"
PYTHONUNBUFFERED=1 PCSEG_TRITON_AUTOTUNE=0 timeout "$t" "$PY" -m pytest -q -m "not slow" \
  -p no:cacheprovider --continue-on-collection-errors --durations=15 "${files[@]}" \
  >"$OUT/pytest.log" 2>&1
rc=$?
log "pytest exit $rc: $(tail -n 1 "$OUT/pytest.log")"
[ $rc -ne 0 ] && STATUS=1
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -20 | tee -a "$OUT/gpu_check.log" >/dev/null

# 4. benchmark (autotuned Triton)
t=$(($(left) - 20))
[ "$t" -gt 180 ] && t=180
[ "$t" -lt 30 ] && t=30
log "bench_gpu.py (timeout ${t}s)"
PYTHONUNBUFFERED=1 timeout "$t" "$PY" scripts/bench_gpu.py --repeat 5 --out "$OUT" \
  >"$OUT/bench.log" 2>&1
rc=$?
log "bench exit $rc"
[ $rc -ne 0 ] && STATUS=1
[ -f "$OUT/bench_gpu.txt" ] && cat "$OUT/bench_gpu.txt" >>"$OUT/gpu_check.log"

# 5. optional: the training step with torch.compile, only if time is left
t=$(($(left) - 10))
if [ "$t" -ge 60 ]; then
  log "bench_gpu.py --compile (timeout ${t}s)"
  PYTHONUNBUFFERED=1 timeout "$t" "$PY" scripts/bench_gpu.py --sections "" --compile --repeat 5 \
    --out "$OUT/compile" \
    >"$OUT/bench_compile.log" 2>&1
  log "bench --compile exit $?"
  [ -f "$OUT/compile/bench_gpu.txt" ] && cat "$OUT/compile/bench_gpu.txt" >>"$OUT/gpu_check.log"
else
  log "skipped the torch.compile benchmark (${t}s left)"
fi

log "done, status $STATUS"
exit $STATUS
