#!/usr/bin/env bash
# The GPU check: what has only run through its CPU twin, run on a GPU in one go (at most 8 minutes on one GPU), with
# one summary table (check, result, number, verdict) at the end; exit 1 if any check failed.
#   1. the CUDA-only tests (pytest -m cuda), among them tiny aMUSEd in bf16 sampling and taking a learner update
#   2. configs/smoke-1gpu.yaml trained 3 iterations on its embedded Ray cluster: the weight version advances
#   3. weight sync over NCCL at ~1B parameters against a device-to-device copy (benchmarks/gpu_weight_sync.py;
#      NCCL needs two GPUs, so one GPU runs the gloo twin and says so)
#   4. the sampler against its compute floor, in bf16 on the GPU (benchmarks/sampler.py)
# Without a GPU (or with GPU_CHECK_DEVICE=cpu) it runs the CPU twins at small sizes and says what it skipped;
# GPU_CHECK_QUICK=1 shrinks the twins further (the test of this script). Time limits: each GPU piece's keeps the
# whole within 8 minutes (460 s at most); the CPU twins' only catch a hang on a loaded machine. Run from anywhere:
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"  # the same in every Ray process started from here
unset RAY_ADDRESS  # the training check starts its own embedded cluster, which ends with its process
QUICK="${GPU_CHECK_QUICK:-0}"
[ "${GPU_CHECK_DEVICE:-}" = cpu ] && export CUDA_VISIBLE_DEVICES=""
GPUS=$("$PY" -c 'import torch; print(torch.cuda.device_count())') || GPUS=0
OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
SUMMARY="$OUT/summary.tsv"
START=$SECONDS

row() {  # check, result, number, verdict (PASS, FAIL or SKIP)
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
    echo "[gpu-check] $1: $4 ($2; $3) at $((SECONDS - START)) s" >&2
}

failure() {  # failure LOG RC: what a piece that left no result says
    if [ "$2" -eq 124 ]; then echo "timed out"; return; fi
    echo "exit $2: $(tail -n 1 "$OUT/$1" 2>/dev/null | cut -c1-100)"
}

run() {  # run LOG SECONDS COMMAND...: the command under a time limit, its output in $OUT/LOG
    local log="$OUT/$1" limit=$2
    shift 2
    timeout --kill-after=20 "$limit" "$@" >"$log" 2>&1
}

py() {  # a small python computation on the pieces' outputs
    "$PY" -c "$@"
}

json_line() {  # json_line LOG EXPRESSION: the expression of r, the last JSON line the piece printed
    py 'import json, sys
r = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")][-1]
print(eval(sys.argv[2]))' "$OUT/$1" "$2" 2>/dev/null
}

junit() {  # junit FILE [NAME]: "passed failed skipped" of its test cases (those whose name contains NAME)
    py 'import sys, xml.etree.ElementTree as ET
cases = [c for c in ET.parse(sys.argv[1]).iter("testcase") if len(sys.argv) < 3 or sys.argv[2] in c.get("name")]
bad = sum(c.find("failure") is not None or c.find("error") is not None for c in cases)
skipped = sum(c.find("skipped") is not None for c in cases)
print(len(cases) - bad - skipped, bad, skipped)' "$@" 2>/dev/null || echo "0 1 0"
}

pytest_row() {  # pytest_row CHECK LOG RC [NAME]: a row from a pytest run's junit file (LOG.xml) and exit code
    local counts passed failed skipped
    if [ ! -f "$OUT/$2.xml" ]; then
        row "$1" "$(failure "$2" "$3")" "-" FAIL
        return
    fi
    counts=$(junit "$OUT/$2.xml" ${4:+"$4"})
    read -r passed failed skipped <<<"$counts"
    local verdict=PASS
    if [ "$3" -ne 0 ] || [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ]; then verdict=FAIL; fi
    row "$1" "$passed passed, $failed failed, $skipped skipped" "$passed/$((passed + failed + skipped))" "$verdict"
}

# 1 and 5: the CUDA-only tests (aMUSEd in bf16 among them), or aMUSEd's CPU twin in float32
tests_piece() {
local rc AMUSED=tests/models/test_amused.py::test_one_learner_update_trains_the_transformer
if [ "$GPUS" -gt 0 ]; then
    run cuda 140 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests --junitxml="$OUT/cuda.xml"
    rc=$?
    pytest_row "CUDA-only tests (pytest -m cuda)" cuda $rc
    pytest_row "tiny aMUSEd bf16 on CUDA: sample + update" cuda $((rc == 124 ? rc : 0)) "${AMUSED##*::}[cuda-bf16]"
else
    row "CUDA-only tests (pytest -m cuda)" "not run: no GPU" "-" SKIP
    run amused 300 "$PY" -m pytest -q -p no:cacheprovider "$AMUSED[cpu-fp32]" --junitxml="$OUT/amused.xml"
    pytest_row "tiny aMUSEd fp32 on CPU (twin): sample + update" amused $?
fi
}

# 2: a few training iterations on the embedded Ray cluster; the weight version must advance every iteration
train_piece() {
local ITERATIONS CONFIG TRAIN TRAIN_LIMIT rc versions advancing verdict number result
if [ "$GPUS" -gt 0 ]; then
    ITERATIONS=3
    CONFIG=configs/smoke-1gpu.yaml
    TRAIN=(--set train.eval_every=3 --set train.checkpoint_every=3 --set cluster.object_store_mb=1024)
    TRAIN_LIMIT=150
else
    ITERATIONS=$([ "$QUICK" = 1 ] && echo 2 || echo 3)
    CONFIG=configs/smoke-cpu.yaml
    py 'import sys; from cogrpo.data.geneval import write_jsonl; from cogrpo.data.prompts import builtin_metadata
write_jsonl(sys.argv[1], builtin_metadata("heldout")[:4])' "$OUT/eval.jsonl"
    TRAIN=(--set threads=1 --set algo.prompts_per_iteration=2 --set algo.group_size=4 --set sampler.steps=4
           --set sampler.batch_size=8 --set algo.alternate_every=1 --set train.eval_at_start=false
           --set train.eval_every=100 --set train.checkpoint_every=100 --set "train.eval_steps=[4]"
           --set "train.eval_metadata={heldout: $OUT/eval.jsonl}" --set cluster.object_store_mb=256)
    TRAIN_LIMIT=300
fi
run train $TRAIN_LIMIT "$PY" -m cogrpo.train --config $CONFIG --run-dir "$OUT/run" --set runtime=ray \
    --set train.iterations=$ITERATIONS "${TRAIN[@]}"
rc=$?
versions=$(py 'import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(" ".join(str(r["weight_version"]) for r in rows if "weight_version" in r))' "$OUT/run/metrics.jsonl" 2>/dev/null)
advancing=$(py 'import sys; v = [int(x) for x in sys.argv[2:]]
print(int(len(v) == int(sys.argv[1]) and all(b > a for a, b in zip(v, v[1:])) and v[0] >= 1))' $ITERATIONS $versions)
verdict=FAIL
[ $rc -eq 0 ] && [ "$advancing" = 1 ] && verdict=PASS
number="-"
[ -n "$versions" ] && number="version ${versions%% *} -> ${versions##* }"
result="exit $rc, weight versions: ${versions:-none}"
[ $rc -eq 124 ] && result="timed out, weight versions: ${versions:-none}"
row "$CONFIG, $ITERATIONS iterations on Ray" "$result" "$number" $verdict
}

# 3: weight sync through the broadcast transport against a copy of the same bytes
sync_row() {  # sync_row CHECK LOG RC
    local fields
    fields=$(json_line "$2" '"%.0fM params %s in %s s, copy %s s, %s GB/s|ratio %s|%d" % (r["params"] / 1e6,
        r["dtype"][6:], r["sync_s"], r["copy_floor_s"], r["GB_per_s"], r["ratio"], r["match"])')
    [ -z "$fields" ] && fields="$(failure "$2" "$3")|-|0"
    local verdict=FAIL
    [ "$3" -eq 0 ] && [ "${fields##*|}" = 1 ] && verdict=PASS
    local result=${fields%|*}
    row "$1" "${result%%|*}" "${result##*|}" $verdict
}
sync_piece() {
local why TWIN_PARAMS
TWIN_PARAMS=$([ "$QUICK" = 1 ] && echo 1e6 || echo 5e6)
if [ "$GPUS" -ge 2 ]; then
    run sync 110 "$PY" benchmarks/gpu_weight_sync.py --device cuda --params 1e9 --repeats 5
    sync_row "weight sync, NCCL GPU0 -> GPU1, vs device copy" sync $?
else
    why=$([ "$GPUS" -eq 1 ] && echo "one GPU: NCCL refuses two ranks on one device" || echo "no GPU")
    row "weight sync, NCCL at ~1B, vs device copy" "not run: $why" "-" SKIP
    run sync 300 env CUDA_VISIBLE_DEVICES="" "$PY" benchmarks/gpu_weight_sync.py --device cpu \
        --params "$TWIN_PARAMS" --repeats 3
    sync_row "weight sync, gloo (twin), vs memory copy" sync $?
fi
}

# 4: the sampler against its floor of forward passes (the BENCHMARKS.md target on a GPU; a loose bound for the
# small-batch twin on a shared CPU, whose ratio is mostly noise)
sampler_piece() {
local BOUND CHECK rc ratio verdict result
if [ "$GPUS" -gt 0 ]; then
    run sampler 60 "$PY" benchmarks/sampler.py --config configs/smoke-1gpu.yaml --device cuda --dtype bfloat16 \
        --batch 64 --steps 8 --repeats 7
    rc=$?
    BOUND=1.15
    CHECK="sampler bf16 on CUDA, batch 64 x 8 steps"
else
    run sampler 300 "$PY" benchmarks/sampler.py --batch 8 --steps 4 --threads 1 \
        --repeats "$([ "$QUICK" = 1 ] && echo 3 || echo 5)"
    rc=$?
    BOUND=1.5
    CHECK="sampler on CPU (twin), batch 8 x 4 steps"
fi
ratio=$(json_line sampler 'r["ratio"]')
verdict=FAIL
[ $rc -eq 0 ] && [ -n "$ratio" ] && py "import sys; sys.exit(not $ratio <= $BOUND)" && verdict=PASS
result="sampler / floor of forward passes, bound $BOUND"
[ -z "$ratio" ] && result=$(failure sampler $rc)
row "$CHECK" "$result" "ratio ${ratio:-none}" $verdict
}

tests_piece
train_piece
sync_piece
sampler_piece

# the summary
echo
if [ "$GPUS" -gt 0 ]; then
    echo "GPU check on $GPUS GPU(s), $((SECONDS - START)) s"
else
    echo "GPU check: no GPU, so the CPU twins at small sizes ran, $((SECONDS - START)) s. Skipped: the CUDA-only" \
         "tests, bf16 on CUDA, NCCL, the 1B weight sync and the GPU sampler."
fi
py 'import sys
rows = [["check", "result", "number", "verdict"]] + [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
widths = [max(len(r[i]) for r in rows) for i in range(4)]
for r in rows:
    print("| " + " | ".join(cell.ljust(w) for cell, w in zip(r, widths)) + " |")' "$SUMMARY"
if cut -f4 "$SUMMARY" | grep -qx FAIL; then
    echo "FAILED: logs in $OUT"
    exit 1
fi
rm -rf "$OUT"
echo "all checks passed"
