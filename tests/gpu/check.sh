#!/usr/bin/env bash
# GPU check of rewas-rt, for an NVIDIA machine with TensorRT 10 or 11 (README: "GPU check").
#
#   pip install -e '.[gpu,export,test,bench]' tensorrt     # onnxruntime-gpu, cuda-python 12.x, TensorRT
#   bash tests/gpu/check.sh                                # ~5-10 min; OUT=dir keeps the results
#
# 1. environment: driver, GPU, TensorRT, cuda-python, ONNX Runtime providers (the backends' own probes);
# 2. builds the tiny engine directory with TensorRT engines (strongly typed from the FP16 graphs;
#    on TensorRT 10 also weakly typed with the FP16 flag, into a second directory);
# 3. runs the GPU tests (the ones that skip without a GPU) and fails if any of them still skips;
# 4. a short latency comparison of every backend on the tiny engines (benchmarks/latency.py --quick);
# 5. prints one summary; the exit status is 0 only when every step passed.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
OUT=${OUT:-$(mktemp -d -t rewas-gpu-check-XXXXXX)}
mkdir -p "$OUT"
declare -a SUMMARY=()
FAILED=0
step() {  # step NAME STATUS DETAIL
    SUMMARY+=("$(printf '%-12s %-5s %s' "$1" "$2" "$3")")
    [ "$2" = "ok" ] || FAILED=1
}

# 1. environment -------------------------------------------------------------------------------
DRIVER=$(nvidia-smi --query-gpu=driver_version,name,compute_cap --format=csv,noheader 2>/dev/null | head -1)
if [ -n "$DRIVER" ]; then step environment ok "driver, GPU, cc: $DRIVER"; else step environment FAIL "nvidia-smi found no GPU"; fi
ENV_JSON=$("$PY" - <<'PY' 2>&1
import json
from rewas_rt.backends import backend_status
from rewas_rt.manifest import detect_tensorrt
out = {"tensorrt": detect_tensorrt(), "backends": {k: list(v) for k, v in backend_status().items()}}
try:
    import cuda.bindings, importlib.metadata as md
    out["cuda-python"] = md.version("cuda-python")
except Exception as e:  # noqa: BLE001
    out["cuda-python"] = f"missing ({e})"
print(json.dumps(out))
PY
)
echo "$ENV_JSON" > "$OUT/environment.json"
TRT_VERSION=$("$PY" -c "import json,sys; d=json.load(open('$OUT/environment.json')); print((d.get('tensorrt') or {}).get('version',''))" 2>/dev/null)
if [ -n "$TRT_VERSION" ]; then step tensorrt ok "TensorRT $TRT_VERSION; $(cat "$OUT/environment.json")"
else step tensorrt FAIL "TensorRT or GPU not detected: $ENV_JSON"; fi

# 2. tiny engines --------------------------------------------------------------------------------
if "$PY" export/build_engines.py --config tiny --random-weights --out "$OUT/tiny" > "$OUT/build.log" 2>&1; then
    step build ok "$(tail -1 "$OUT/build.log")"
else
    step build FAIL "see $OUT/build.log: $(tail -1 "$OUT/build.log")"
fi
if [ "${TRT_VERSION%%.*}" = "10" ]; then
    if "$PY" export/build_engines.py --config tiny --random-weights --trt-typing weak --out "$OUT/tiny-weak" \
            > "$OUT/build-weak.log" 2>&1; then
        step build-weak ok "TensorRT 10 FP16 flag + FP32 pins: $(tail -1 "$OUT/build-weak.log")"
    else
        step build-weak FAIL "see $OUT/build-weak.log: $(tail -1 "$OUT/build-weak.log")"
    fi
fi

# 3. GPU tests --------------------------------------------------------------------------------------
GPU_TESTS="tests/test_backends.py tests/test_build_engines.py tests/test_tensorrt_build.py tests/test_fp16_graph.py"
"$PY" -m pytest -q -rs $GPU_TESTS > "$OUT/pytest.log" 2>&1
RC=$?
RESULT=$(grep -E "passed|failed" "$OUT/pytest.log" | tail -1)
# On a GPU machine nothing GPU-related may skip (an ONNX Runtime provider missing = install problem).
SKIPS=$(grep -E "^SKIPPED" "$OUT/pytest.log" | grep -viE "every backend is available|a GPU backend is available|TensorRT is available" || true)
if [ $RC -eq 0 ] && [ -z "$SKIPS" ]; then step gpu-tests ok "$RESULT"
else step gpu-tests FAIL "$RESULT; skipped: ${SKIPS:-none} (see $OUT/pytest.log)"; fi

# 4. latency -----------------------------------------------------------------------------------------
if [ -f "$OUT/tiny/manifest.json" ] && "$PY" benchmarks/latency.py --quick --engines "$OUT/tiny" --out "$OUT/latency" \
        > "$OUT/latency.log" 2>&1; then
    step latency ok "table: $OUT/latency/latency.md"
else
    step latency FAIL "see $OUT/latency.log"
fi

# 5. summary -----------------------------------------------------------------------------------------
echo
echo "rewas-rt GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ), results in $OUT)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
[ -f "$OUT/latency/latency.md" ] && { echo; cat "$OUT/latency/latency.md"; }
echo
if [ $FAILED -eq 0 ]; then echo "GPU check: PASSED"; else echo "GPU check: FAILED"; fi
exit $FAILED
