"""Kubernetes manifests: schema-valid (strict, pinned versions) and consistent with each other."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "kubernetes"
# Oldest and newest minor versions we promise to deploy on. Pinned, not "latest", so a new
# kubernetes-validate release cannot silently change what is checked.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")
MANIFESTS = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
CONFIG_KEYS = {
    "bind_address",
    "workers",
    "audience",
    "log_level",
    "database",
    "master_key_file",
    "log_key_file",
    "redis_url",
    "verification",
    "limits",
    "cors",
    "webauthn",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _one(name: str) -> dict[str, Any]:
    docs = _docs(K8S_DIR / name)
    assert len(docs) == 1
    return docs[0]


def _container() -> dict[str, Any]:
    containers = _one("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_schema_valid_in_strict_mode(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs
    for doc in docs:
        # SchemaNotFoundError (unknown kind/apiVersion) fails the test too, unlike the CLI's WARN.
        kv.validate(doc, version, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The validation above can fail: a misspelt securityContext field is caught."""
    deployment = copy.deepcopy(_one("deployment.yaml"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # wrong capitalisation
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    kustomization = _one("kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    # Examples (the Secret, the one-off migration Job) are applied by hand, never by -k.
    assert set(resources) == {p.name for p in MANIFESTS if not p.name.endswith(".example.yaml")}
    image = _container()["image"].rsplit(":", 1)[0]
    assert [i["name"] for i in kustomization["images"]] == [image]


def test_pod_security_context_is_locked_down() -> None:
    pod = _one("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = _container()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_probes_resources_and_rollout() -> None:
    deployment = _one("deployment.yaml")
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # preStop pause plus at least 30 s to drain requests (request_timeout_seconds).
    assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + 30


def test_writable_paths_are_volumes_and_secrets_come_from_the_secret() -> None:
    pod = _one("deployment.yaml")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/var/lib/proof-messenger"]["name"]]
    assert mounts["/etc/proof-messenger/keys"]["readOnly"] is True

    secret = _one("secret.example.yaml")
    secret_name = secret["metadata"]["name"]
    secret_keys = set(secret["stringData"])
    key_volume = volumes[mounts["/etc/proof-messenger/keys"]["name"]]["secret"]
    assert key_volume["secretName"] == secret_name
    assert {item["key"] for item in key_volume["items"]} <= secret_keys

    env = {e["name"]: e for e in _container()["env"]}
    assert env["BIND_ADDRESS"]["value"] == "0.0.0.0:8080"
    db_ref = env["AUDIT_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert (db_ref["name"], db_ref["key"]) == (secret_name, "AUDIT_DB_URL")
    assert "AUDIT_DB_URL" in secret_keys
    key_files = {item["path"] for item in key_volume["items"]}
    for var in ("PROOF_MESSENGER_MASTER_KEY_FILE", "PROOF_MESSENGER_LOG_KEY_FILE"):
        directory, _, filename = env[var]["value"].rpartition("/")
        assert directory == "/etc/proof-messenger/keys" and filename in key_files

    config_volume = volumes[mounts["/etc/proof-messenger/relay.yaml"]["name"]]["configMap"]
    assert config_volume["name"] == _one("configmap.yaml")["metadata"]["name"]
    assert _container()["args"] == ["serve", "--config", "/etc/proof-messenger/relay.yaml"]


def test_example_secret_holds_only_placeholders() -> None:
    text = (K8S_DIR / "secret.example.yaml").read_text(encoding="utf-8")
    assert text.startswith("# EXAMPLE ONLY")
    secret = _one("secret.example.yaml")
    assert "data" not in secret  # nothing base64-encoded that could hide a real value
    for key in ("AUDIT_DB_URL", "master.key", "log-signing.key"):
        assert "EXAMPLE-CHANGE-ME" in secret["stringData"][key]


def test_configmap_relay_yaml_matches_the_config_schema() -> None:
    relay = yaml.safe_load(_one("configmap.yaml")["data"]["relay.yaml"])
    assert set(relay) <= CONFIG_KEYS
    # The database URL and Redis URL carry passwords: they must come from the Secret only.
    assert "url" not in relay["database"]
    assert "redis_url" not in relay
    assert relay["bind_address"] == "0.0.0.0:8080"
    env = {e["name"]: e.get("value") for e in _container()["env"]}
    assert relay["master_key_file"] == env["PROOF_MESSENGER_MASTER_KEY_FILE"]
    assert relay["log_key_file"] == env["PROOF_MESSENGER_LOG_KEY_FILE"]
    systemd_relay = yaml.safe_load(
        (REPO_ROOT / "deploy" / "systemd" / "relay.yaml").read_text(encoding="utf-8")
    )
    assert set(systemd_relay) <= CONFIG_KEYS
    assert relay["limits"] == systemd_relay["limits"]
    assert relay["verification"] == systemd_relay["verification"]


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    deployment = _one("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    service = _one("service.yaml")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    pdb = _one("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    hpa = _one("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # A PDB of minAvailable 1 only protects anything with at least two replicas.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


def test_migration_job_matches_the_deployment() -> None:
    job = _one("migrate-job.example.yaml")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert container["image"] == _container()["image"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        pod["securityContext"]
        == _one("deployment.yaml")["spec"]["template"]["spec"]["securityContext"]
    )
    deployment_env = {e["name"]: e for e in _container()["env"]}
    for var in container["env"]:
        assert deployment_env[var["name"]] == var
