#!/usr/bin/env bash
# On the GPU machine (see stage.sh): `keep N` stores GGUF part N in /tmp/ttt; `train MINUTES` joins
# the parts, installs the carried wheels, converts the backbone with our own loader, trains the
# talker for MINUTES, and writes the EMA weights to $OUT as safetensors shards of at most 15 MiB.
set -euo pipefail
mkdir -p /tmp/ttt
case "$1" in
keep)
    cp ".stage/gguf.$2" /tmp/ttt/ && ls -la /tmp/ttt ;;
train)
    minutes=$2
    [ -f .stage/gguf.2 ] && cp .stage/gguf.2 /tmp/ttt/
    name=$(cat .stage/gguf.name 2>/dev/null || echo SmolLM2-135M-Instruct.Q4_1.gguf)
    cat /tmp/ttt/gguf.0 /tmp/ttt/gguf.1 /tmp/ttt/gguf.2 > "/tmp/ttt/$name"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .stage/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD" TTT_CACHE_DIR=/tmp/ttt/cache HF_HUB_OFFLINE=1
    tar -xf .stage/aligned.tar -C /tmp/ttt
    nvidia-smi --query-gpu=name,memory.used --format=csv
    python3 -m agent.cli train talker --llm "/tmp/ttt/$name" --data /tmp/ttt/aligned --run /tmp/ttt/run \
        --minutes "$minutes" --threads 8 --positions-per-step 32768 --val-every 100 \
        --save-every-s 60 --speech-every 0 ${TALKER_ARGS:-} 2>&1 | tr '\r' '\n' | grep -v "it/s\]" | tail -n 60
    python3 training/gpu/shards.py split /tmp/ttt/run/last.safetensors "$OUT/talker" 15
    cp /tmp/ttt/run/log.jsonl "$OUT/log.jsonl"
    ls -la "$OUT" ;;
*)
    echo "usage: run_talker.sh keep N | train MINUTES" >&2; exit 2 ;;
esac
