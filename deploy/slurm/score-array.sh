#!/usr/bin/env bash
# Scores a pair file larger than one node as a Slurm job array: task I of N takes shard I/N
# (a contiguous block of rows) and writes scores-I.jsonl, replaced whole on a retry.
# Concatenated in task order (cat out/scores-{0..N-1}.jsonl), the outputs are one run's.
#   sbatch --array=0-7 deploy/slurm/score-array.sh MODEL_DIR pairs.jsonl out/
#SBATCH --job-name=crossenc-score
#SBATCH --cpus-per-task=2
#SBATCH --mem=2G
#SBATCH --requeue
set -euo pipefail
model=${1:?model folder}
input=${2:?pair file}
out=${3:?output folder}
n=${SLURM_ARRAY_TASK_COUNT:?run under sbatch --array=0-(N-1)}
i=${SLURM_ARRAY_TASK_ID:?run under sbatch --array}
mkdir -p "$out"
exec crossenc predict --model "$model" --input "$input" --quantize int8 \
  --shard "$i/$n" --output "$out/scores-$i.jsonl"
