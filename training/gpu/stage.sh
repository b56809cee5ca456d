#!/usr/bin/env bash
# Prepare, on this machine, what one GPU training run of the talker needs to take along (.stage/,
# git-ignored): the SmolLM2 GGUF in three parts (a device call carries at most 64 MiB with the
# working tree), the aligned corpus, and the wheels the device image lacks (gguf).
# Then, with the device tool, three calls within its idle window (see TALKER_CARD.md, "On a GPU"):
#   1. carry [".stage/gguf.0"]                      command: bash training/gpu/run_talker.sh keep 0
#   2. carry [".stage/gguf.1"]                      command: bash training/gpu/run_talker.sh keep 1
#   3. carry [".stage/gguf.2", ".stage/aligned.tar", ".stage/wheels"]
#                                                    command: bash training/gpu/run_talker.sh train 8
set -euo pipefail
cd "$(dirname "$0")/../.."
ALIGNED=${ALIGNED:-data/aligned}
rm -rf .stage && mkdir -p .stage/wheels .stage/aside
# Tracked files travel with every device call (64 MiB in all, the GGUF part included): the talker
# seeds (training/seeds/, 38 MB each) are not needed there. Put them back after the GPU window with
# `git checkout -- training/seeds`.
for seed in training/seeds/*.safetensors; do
    [ -f "$seed" ] && mv "$seed" .stage/aside/ && echo "set aside for the device calls: $seed"
done
gguf=$(.venv/bin/python -c "from model.assets import LLM, locate; print(locate(LLM))")
split -n 3 -d -a 1 "$gguf" .stage/gguf.
basename "$gguf" > .stage/gguf.name
tar -cf .stage/aligned.tar -C "$(dirname "$ALIGNED")" "$(basename "$ALIGNED")"
.venv/bin/pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform any -d .stage/wheels "gguf==$(.venv/bin/pip show gguf | awk '/^Version/{print $2}')"
du -sh .stage/* | sed 's/^/staged: /'
