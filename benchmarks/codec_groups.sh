#!/usr/bin/env bash
# The G sweep behind the codec's choice of code groups per frame (model/checkpoints/CODEC_CARD.md).
# Trains one codec per G from scratch for the same number of steps on the same corpus, without
# the vocoder (it does not depend on G), then measures each through Griffin-Lim on the dev
# sentences: WER of the resynthesis, mel distance, and the validation mel L1 / CTC of the run.
# Usage: [GROUPS_TO_SWEEP="1 2 4 8"] benchmarks/codec_groups.sh [STEPS] [CORPUS]   (about 10 min per G on one core)
set -euo pipefail
steps=${1:-1500}
corpus=${2:-data/corpus}
ttt=${TTT:-.venv/bin/ttt}
for g in ${GROUPS_TO_SWEEP:-1 2 4 8}; do
  run=runs/sweep_g$g
  "$ttt" train codec --data "$corpus" --run "$run" --groups "$g" --steps "$steps" --minutes 600 \
    --threads 1 --voc-every 1000000 > "$run.train.log" 2>&1
  "$ttt" eval codec --checkpoint "$run/best.safetensors" --griffin-lim > "$run.eval.json"
  echo "G=$g $(grep val_mel "$run/log.jsonl" | tail -n 1) $(cat "$run.eval.json")"
done
