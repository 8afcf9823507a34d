#!/usr/bin/env bash
# On the GPU machine, once every part is in /root/stage (one device call per part; see BENCHMARKS.md):
# vLLM 0.26.0, its dependencies and the product's into /root/site, the reference oracle's into /root/oracle-site,
# and an entry point so vLLM finds the T3 plugin. Then: export PYTHONPATH=/root/site:$PWD/src.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd /root/stage
cat part.vllm.* > vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl
rm -rf w p o && mkdir -p w p o
cat part.deps.* | tar xf - -C w
cat part.prod.* | tar xf - -C p
cat part.oracle.* | tar xf - -C o
python3 -m pip install -q --no-index --no-deps --no-compile --target /root/site vllm-0.26.0-*.whl w/*.whl p/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --target /root/oracle-site o/*.whl
find /root/oracle-site/torchaudio/lib -name '*.so' -delete 2>/dev/null || true
info=/root/site/chatterbox_vllm-0.dev0.dist-info
mkdir -p "$info"
printf 'Metadata-Version: 2.1\nName: chatterbox-vllm\nVersion: 0.dev0\n' > "$info/METADATA"
sed -n '/^\[project.entry-points."vllm.general_plugins"\]/,/^$/p' "$repo/pyproject.toml" \
  | sed 's/^\[project.entry-points."vllm.general_plugins"\]/[vllm.general_plugins]/; s/ = "/ = /; s/"$//' > "$info/entry_points.txt"
cat "$info/entry_points.txt"
