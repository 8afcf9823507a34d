#!/usr/bin/env bash
# Here (with registry access): download the product's and the oracle's missing wheels for the GPU machine
# (CPython 3.12, manylinux x86_64) and cut them into parts that fit one device call (48 MiB with the working tree).
# vLLM's own parts come from ../shared/device/stage-vllm.sh. Writes .device-stage/part.{prod,oracle}.NN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python="${PYTHON:-.venv/bin/python}"
stage=.device-stage
for set in prod:benchmarks/device/product-wheels.txt oracle:benchmarks/device/oracle-wheels.txt; do
  name="${set%%:*}" list="${set#*:}"
  dir="$(mktemp -d)"
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$dir" -r "$list"
  rm -f "$stage/part.$name".*
  (cd "$dir" && tar cf - ./*.whl) | split -b 40M -d - "$stage/part.$name."
  rm -rf "$dir"
done
ls -la "$stage"/part.prod.* "$stage"/part.oracle.*
