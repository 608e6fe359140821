#!/usr/bin/env bash
# The six Table-5 settings on the tiny default, seeds 0 and 1, one multirun directory with a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
SEEDS=${SEEDS:-0,1}
.venv/bin/python -m visd_exp.train -m \
  +experiment=ema_topk,no_feedback,current_topk,sync10_topk,ema_sampled,grpo \
  seed="$SEEDS" callbacks.progress_bar=null "$@"
