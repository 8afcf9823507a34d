#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (one device call per part; see BENCHMARKS.md): installs
# whatever sets arrived. vLLM 0.26.0 + its dependencies + the product's wheels (part.vllm/deps/prod) into
# /root/site, the reference oracle's (part.oracle) into /root/oracle-site, or only the S3Gen set (part.s3gen, one
# part: enough for benchmarks/s3gen_profile.py) into /root/site; plus an entry point so vLLM finds the T3 plugin.
# Then: export PYTHONPATH=/root/site:$PWD/src.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd /root/stage
has() { compgen -G "part.$1.*" >/dev/null; }
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$@"; }
rm -rf w p o s && mkdir -p w p o s
wheels=()
if has vllm; then
  cat part.vllm.* > vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl
  wheels+=(vllm-0.26.0-*.whl)
fi
if has deps; then cat part.deps.* | tar xf - -C w; wheels+=(w/*.whl); fi
if has prod; then cat part.prod.* | tar xf - -C p; wheels+=(p/*.whl); fi
if has s3gen; then
  cat part.s3gen.* | tar xf - -C s
  for wheel in s/*.whl; do  # the full sets win where both came
    [ -e "p/$(basename "$wheel")" ] || [ -e "w/$(basename "$wheel")" ] || wheels+=("$wheel")
  done
fi
[ ${#wheels[@]} -gt 0 ] && pip_target /root/site "${wheels[@]}"
if has oracle; then
  cat part.oracle.* | tar xf - -C o
  pip_target /root/oracle-site o/*.whl
  find /root/oracle-site/torchaudio/lib -name '*.so' -delete 2>/dev/null || true
fi
info=/root/site/chatterbox_vllm-0.dev0.dist-info
mkdir -p "$info"
printf 'Metadata-Version: 2.1\nName: chatterbox-vllm\nVersion: 0.dev0\n' > "$info/METADATA"
sed -n '/^\[project.entry-points."vllm.general_plugins"\]/,/^$/p' "$repo/pyproject.toml" \
  | sed 's/^\[project.entry-points."vllm.general_plugins"\]/[vllm.general_plugins]/; s/ = "/ = /; s/"$//' > "$info/entry_points.txt"
echo "installed: ${#wheels[@]} wheels into /root/site$(has oracle && echo ', the oracle into /root/oracle-site')"
