"""The cluster path, offline: deploy/k8s/ against the Kubernetes schemas, and the three flows
compiled for Argo Workflows (`argo-workflows create --only-json`, which prints the workflow
template and deploys nothing) with the README's Kubernetes settings and the GCS datastore on
gcp-storage-emulator."""

import json
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import FLOW, MONITOR_FLOW, MULTINODE_FLOW, ROOT, run_python, use_gs_datastore

from lib.config import RunConfig, parse

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
# The oldest Kubernetes minor that the manifests promise (docs/deploy.md) and the newest that
# kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
EXTENSION = ROOT / "tests" / "metaflow_ext"
SYSROOT = "gs://facet/metaflow"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> list[dict]:
    return [doc for path in MANIFESTS for doc in documents(path) if doc["kind"] == kind]


# ---- deploy/k8s/ ----


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path, version):
    for document in documents(path):
        # strict: a field the schema does not know (a typo, a misplaced key) is an error too.
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_what_the_cluster_would():
    deployment = documents(K8S / "deployment.yaml")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = "/readyz"  # unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    del container["readinessProbe"]["httpGet"]["paht"]
    container["resources"]["requests"]["memory"] = ["2Gi"]  # wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_the_manifests_are_in_the_set():
    assert {doc["kind"] for path in MANIFESTS for doc in documents(path)} == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


@pytest.mark.parametrize("deployment", by_kind("Deployment"), ids=["model-dir", "model-run"])
def test_a_deployment_probes_drains_and_runs_as_the_image_user_on_a_read_only_root(deployment):
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert str(pod["securityContext"]["runAsUser"]) == user.group(1)
    for resource in ("cpu", "memory"):
        assert resource in container["resources"]["requests"]
    # The kubelet's grace outlasts the preStop pause and gunicorn's graceful_timeout.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + 30
    env = {item["name"]: item["value"] for item in container["env"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    # The prediction log and /tmp are the only writable places.
    assert str(Path(env["PREDICTION_LOG"]).parent) in mounts and "/tmp" in mounts
    assert not mounts[str(Path(env["PREDICTION_LOG"]).parent)].get("readOnly")
    assert ("MODEL_DIR" in env) != ("MODEL_RUN" in env)
    if "MODEL_DIR" in env:
        assert mounts[env["MODEL_DIR"]]["readOnly"] is True
    else:
        assert env["METAFLOW_DEFAULT_DATASTORE"] == "gs"
        assert env["METAFLOW_DATASTORE_SYSROOT_GS"].startswith("gs://")
    port = container["ports"][0]
    assert env["PORT"] == str(port["containerPort"])


def test_the_service_hpa_and_pdb_point_at_the_deployment():
    deployment = documents(K8S / "deployment.yaml")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = by_kind("Service")
    (autoscaler,) = by_kind("HorizontalPodAutoscaler")
    (budget,) = by_kind("PodDisruptionBudget")
    assert service["spec"]["selector"] == labels
    assert budget["spec"]["selector"]["matchLabels"] == labels
    port_names = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert budget["spec"]["minAvailable"] < autoscaler["spec"]["minReplicas"]


# ---- Argo Workflows ----


def readme_settings() -> dict[str, str]:
    """The README's `export METAFLOW_...=value` lines: the Kubernetes and Argo settings."""
    text = (ROOT / "README.md").read_text()
    settings = dict(re.findall(r"^export (METAFLOW_\w+)=(\S+)", text, re.M))
    assert "METAFLOW_KUBERNETES_CONTAINER_IMAGE" in settings
    return settings


@pytest.fixture
def argo(gcs, monkeypatch):
    """Compile a flow for Argo: its WorkflowTemplate as JSON. The code package goes to the
    emulated bucket, as it would to the real one."""
    settings = readme_settings()
    for name, value in settings.items():
        if not name.startswith(("METAFLOW_DEFAULT_DATASTORE", "METAFLOW_DATASTORE_")):
            monkeypatch.setenv(name, value)
    use_gs_datastore(monkeypatch, SYSROOT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXTENSION), str(ROOT)]))
    monkeypatch.setenv("METAFLOW_DEFAULT_GCP_CLIENT_PROVIDER", "facet-emulator")

    def compile_flow(flow: Path, config: Path | None = None) -> dict:
        options = ["--config", "config", config] if config else []
        done = run_python(flow, *options, "argo-workflows", "create", "--only-json")
        return json.loads(done.stdout)

    compile_flow.settings = settings
    return compile_flow


def templates(workflow: dict) -> dict[str, dict]:
    return {template["name"]: template for template in workflow["spec"]["templates"]}


def containers(workflow: dict) -> list[dict]:
    return [t["container"] for t in workflow["spec"]["templates"] if "container" in t]


def assert_step_settings(workflow: dict, settings: dict[str, str]) -> None:
    """Every step runs the README's image in its namespace as its service account."""
    assert workflow["metadata"]["namespace"] == settings["METAFLOW_KUBERNETES_NAMESPACE"]
    steps = [t for t in workflow["spec"]["templates"] if "container" in t]
    assert steps
    for template in steps:
        if template["name"].startswith("error-msg-capture"):
            continue  # Metaflow's own hook
        assert template["container"]["image"] == settings["METAFLOW_KUBERNETES_CONTAINER_IMAGE"]
        account = settings["METAFLOW_KUBERNETES_SERVICE_ACCOUNT"]
        assert template["serviceAccountName"] == account


def as_number(quantity: str) -> float:
    """'16.0' -> 16, '64000.0M' -> 64000 (Metaflow's memory is in MB)."""
    return float(quantity.rstrip("M"))


@pytest.mark.emulator
def test_trainflow_compiles_for_argo_with_the_configs_resources_retries_and_foreach(argo):
    config_file = ROOT / "flows" / "configs" / "celeba-vit-base.json"
    config = RunConfig.of(parse(config_file.read_text()))
    workflow = argo(FLOW, config_file)
    assert workflow["kind"] == "WorkflowTemplate"
    assert_step_settings(workflow, argo.settings)
    steps = templates(workflow)

    train = steps["train"]
    resources = train["container"]["resources"]
    assert as_number(resources["requests"]["cpu"]) == config.resources.cpu
    assert as_number(resources["requests"]["memory"]) == config.resources.memory
    assert resources["limits"]["nvidia.com/gpu"] == str(config.resources.gpu)
    assert train["retryStrategy"]["limit"] == config.retries
    assert train["activeDeadlineSeconds"] == config.timeout_hours * 3600
    assert steps["evaluate"]["container"]["resources"] == resources

    # start fans out over the shards: one prepare_shard pod per shard, as many as start says.
    dag = {task["name"]: task for task in steps["TrainFlow"]["dag"]["tasks"]}
    fan_out = dag["start-foreach-shards"]
    assert fan_out["withParam"] == "{{tasks.start.outputs.parameters.num-splits}}"
    assert [t["template"] for t in steps[fan_out["template"]]["dag"]["tasks"]] == ["prepare-shard"]
    assert dag["prepare-data"]["depends"] == "start-foreach-shards.Succeeded"

    # The code package the pods download is in the bucket.
    code_url = next(
        e["value"] for e in train["container"]["env"] if e["name"] == "METAFLOW_CODE_URL"
    )
    assert code_url.startswith(f"{SYSROOT}/TrainFlow/")


@pytest.mark.emulator
def test_trainmultinodeflow_compiles_for_argo_with_train_as_a_jobset(argo):
    config_file = ROOT / "flows" / "configs" / "celeba-vit-base-2x8.json"
    config = RunConfig.of(parse(config_file.read_text()))
    workflow = argo(MULTINODE_FLOW, config_file)
    assert_step_settings(workflow, argo.settings)
    steps = templates(workflow)

    # @parallel's train is a JobSet (the cluster needs the JobSet controller): one control
    # job and num_nodes - 1 workers, each pod with the config's resources.
    train = steps["train"]
    assert train["retryStrategy"]["limit"] == config.retries
    manifest = train["resource"]["manifest"]
    assert "kind: JobSet" in manifest
    image = argo.settings["METAFLOW_KUBERNETES_CONTAINER_IMAGE"]
    assert manifest.count(f"image: {image}") == 2  # control and worker
    assert manifest.count(f"nvidia.com/gpu: '{config.resources.gpu}'") == 2
    assert manifest.count(f"cpu: '{float(config.resources.cpu)}'") == 2
    assert manifest.count(f"memory: {float(config.resources.memory)}M") == 2
    assert manifest.count(f"activeDeadlineSeconds: {int(config.timeout_hours * 3600)}") == 2
    dag = {task["name"]: task for task in steps["TrainMultiNodeFlow"]["dag"]["tasks"]}
    assert "start-foreach-shards" in dag and "start-nodes-foreach-parallel" in dag
    assert dag["gather-model"]["depends"] == "start-nodes-foreach-parallel.Succeeded"


@pytest.mark.emulator
def test_monitorflow_compiles_for_argo_hourly_with_the_alert_secret(argo):
    workflow = argo(MONITOR_FLOW)
    assert_step_settings(workflow, argo.settings)
    # @schedule(hourly=True): `create` makes a CronWorkflow from this annotation.
    cron = json.loads(workflow["metadata"]["annotations"]["metaflow/cron"])
    assert cron["schedule"].split()[:4] == ["0", "*", "*", "*"]
    # ALERT_WEBHOOK_URL comes from the Kubernetes secret the README names.
    secret = argo.settings["METAFLOW_ARGO_WORKFLOWS_KUBERNETES_SECRETS"]
    steps = templates(workflow)
    for step in ("start", "detect", "end"):
        sources = steps[step]["container"]["envFrom"]
        assert {"name": secret, "optional": None} in [s["secretRef"] for s in sources]
