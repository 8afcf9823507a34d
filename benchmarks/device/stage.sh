#!/usr/bin/env bash
# Here (with registry access): download the product's and the oracle's missing wheels for the GPU machine
# (CPython 3.12, manylinux x86_64) and cut everything into parts that fit one device call together with the
# working tree (~20 MB of it; a call carries 64 MiB): 40 MiB parts. vLLM's own parts come from
# ../shared/device/stage-vllm.sh in 48 MiB parts, which do not fit beside the tree: run that first, this re-cuts
# them. Writes .device-stage/part.{vllm,deps,prod,oracle,s3gen}.NN.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python="${PYTHON:-.venv/bin/python}"
stage=.device-stage
part_size=40M
for name in vllm deps; do
  if compgen -G "$stage/part.$name.*" >/dev/null; then
    whole="$(mktemp)"
    cat "$stage/part.$name".* > "$whole"
    rm -f "$stage/part.$name".*
    split -b "$part_size" -d "$whole" "$stage/part.$name."
    rm -f "$whole"
  fi
done
for set in prod:benchmarks/device/product-wheels.txt oracle:benchmarks/device/oracle-wheels.txt \
           s3gen:benchmarks/device/s3gen-wheels.txt; do
  name="${set%%:*}" list="${set#*:}"
  dir="$(mktemp -d)"
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_28_x86_64 -d "$dir" -r "$list"
  rm -f "$stage/part.$name".*
  (cd "$dir" && tar cf - ./*.whl) | split -b "$part_size" -d - "$stage/part.$name."
  rm -rf "$dir"
done
ls -la "$stage"/part.*
