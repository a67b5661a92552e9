#!/usr/bin/env bash
# Install everything the project needs into .venv: system packages (espeak-ng and sox
# for the synthetic corpus, PulseAudio for the virtual microphone), the CPU build of
# PyTorch, the project with its training, offline-model and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in espeak-ng sox pulseaudio; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
    exit 1
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a bare requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "set up: $(.venv/bin/python -c 'import torch, faster_whisper, onnxruntime; print("torch", torch.__version__, "| faster-whisper", faster_whisper.__version__, "| onnxruntime", onnxruntime.__version__)')"
