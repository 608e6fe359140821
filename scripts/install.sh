#!/usr/bin/env bash
# Creates the virtual environment in the order that works on CPU machines (see README, "Set-up"):
#   1. FFmpeg's shared libraries (torchcodec needs them) via apt when missing and we are root;
#   2. torch==2.13.0 FIRST and ALONE (any looser spec pulls a multi-GB CUDA build);
#   3. the package with its dev, bench and slurm extras, torch already satisfied.
set -euo pipefail
PYTHON=${1:-python3.11}
VENV=${2:-.venv}

have_ffmpeg_libs() {
  ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so' && ldconfig -p 2>/dev/null | grep -q 'libavformat\.so'
}
if ! have_ffmpeg_libs; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo ">> installing FFmpeg libraries (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
  else
    echo "!! FFmpeg shared libraries not found and cannot apt-get install them (not root)." >&2
    echo "   Install ffmpeg (libavcodec, libavformat, ...) with your package manager and re-run." >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
echo ">> installing torch==2.13.0 alone"
$PIP install -q torch==2.13.0
echo ">> installing visd-exp[dev,bench,slurm]"
DS_BUILD_OPS=0 $PIP install -q -e ".[dev,bench,slurm]" -c scripts/cpu-constraints.txt
if $PIP list 2>/dev/null | grep -iqE '^(nvidia-|triton)'; then
  echo "!! CUDA packages were pulled into $VENV; torch must be the CPU wheel here" >&2
  exit 1
fi
echo ">> done: $VENV"
