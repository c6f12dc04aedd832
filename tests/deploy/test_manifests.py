"""deploy/: every manifest is valid against its schema, and its configuration against the settings.

Core kinds are checked by kubernetes-validate against the Kubernetes JSON schemas it
ships (strict: an unknown field is an error); the InferenceService against the
openAPIV3Schema of KServe's CRD, vendored under schemas/ (no network at test time),
made strict the same way. The sidecar.toml of each ConfigMap is loaded with the
sidecar's own settings loader, and the ports, probes and paths of the pods are held
to it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kube

from sidecar.config import Settings, load_settings
from sidecar.control.auth import TokenTable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES = "1.33.0"  # the oldest release the manifests are meant for
CRDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        "inferenceservice-serving.kserve.io-v1beta1.json.gz"
    ),
}


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in documents(path.name):
            yield path.name, doc


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused where the API server would prune them."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    data = gzip.decompress((SCHEMAS / CRDS[(api_version, kind)]).read_bytes())
    schema = strict(json.loads(data))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRDS:
        crd_validator(*key).validate(doc)
    else:
        kube.validate(doc, KUBERNETES, strict=True)


def by_kind(name: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in documents(name) if d["kind"] == kind]


def test_there_are_manifests_of_each_deployment() -> None:
    kinds = {(name, doc["kind"]) for name, doc in all_documents()}
    assert ("sidecar-deployment.yaml", "Deployment") in kinds
    assert ("kserve-inferenceservice.yaml", "InferenceService") in kinds
    assert ("hub.yaml", "Deployment") in kinds


@pytest.mark.parametrize(
    ("name", "index"),
    [
        (name, i)
        for name in sorted(p.name for p in DEPLOY.glob("*.yaml"))
        for i in range(len(documents(name)))
    ],
)
def test_every_manifest_is_valid_against_its_schema(name: str, index: int) -> None:
    validate(documents(name)[index])


@pytest.mark.parametrize(
    ("name", "kind", "path", "typo"),
    [
        ("sidecar-deployment.yaml", "Deployment", ["spec"], "replica"),
        ("hub.yaml", "Service", ["spec", "ports", 0], "targetport"),
        ("kserve-inferenceservice.yaml", "InferenceService", ["spec", "predictor"], "minReplica"),
        (
            "kserve-inferenceservice.yaml",
            "InferenceService",
            ["spec", "predictor", "containers", 1, "readinessProbe", "httpGet"],
            "pth",
        ),
    ],
)
def test_a_misspelt_field_is_refused(name: str, kind: str, path: list[Any], typo: str) -> None:
    (doc,) = by_kind(name, kind)
    node: Any = doc
    for step in path:
        node = node[step]
    node[typo] = 1
    with pytest.raises(jsonschema.ValidationError, match=typo):
        validate(doc)


def sidecar_settings(name: str, tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """The ConfigMap's sidecar.toml as the sidecar reads it, its tokens file from the Secret."""
    (cm,) = by_kind(name, "ConfigMap")
    (secret,) = by_kind(name, "Secret")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(secret["stringData"]["tokens.toml"])
    config = tmp_path / "sidecar.toml"
    config.write_text(cm["data"]["sidecar.toml"])
    settings = load_settings(config, environ={})
    mounted = settings.auth.tokens_file
    assert mounted is not None
    fixed = load_settings(config, environ={}, overrides={"auth": {"tokens_file": str(tokens)}})
    assert TokenTable.from_settings(fixed.auth)  # the Secret's tokens parse, each with a role
    return settings, {"cm": cm, "secret": secret, "tokens_file": mounted}


def pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "InferenceService":
        pod: dict[str, Any] = doc["spec"]["predictor"]
        return pod
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (c,) = [c for c in pod["containers"] if c["name"] == name]
    return c


def port_number(c: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (p,) = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    return int(p)


def mounted_file(pod: dict[str, Any], c: dict[str, Any], path: str) -> tuple[str, str]:
    """(volume source name, key) that a container sees at `path`."""
    for m in c["volumeMounts"]:
        mount = m["mountPath"]
        if mount == path and "subPath" in m:
            key = m["subPath"]
        elif path.startswith(mount.rstrip("/") + "/"):
            key = path[len(mount.rstrip("/")) + 1 :]
        else:
            continue
        (vol,) = [v for v in pod["volumes"] if v["name"] == m["name"]]
        source = vol.get("configMap", {}).get("name") or vol["secret"]["secretName"]
        return source, key
    raise AssertionError(f"nothing is mounted at {path}")


@pytest.mark.parametrize(
    ("name", "kind", "server"),
    [
        ("sidecar-deployment.yaml", "Deployment", "model-server"),
        ("kserve-inferenceservice.yaml", "InferenceService", "kserve-container"),
    ],
)
def test_the_sidecar_fronts_a_model_server_only_it_can_reach(
    name: str, kind: str, server: str, tmp_path: Path
) -> None:
    settings, parts = sidecar_settings(name, tmp_path)
    (doc,) = by_kind(name, kind)
    pod = pod_of(doc)
    sidecar = container(pod, "sidecar")
    model = container(pod, server)
    # The sidecar's config is the ConfigMap, its tokens the Secret, at the paths it reads.
    assert sidecar["args"] == ["sidecar", "serve", "--config", "/etc/sidecar/sidecar.toml"]
    assert mounted_file(pod, sidecar, "/etc/sidecar/sidecar.toml") == (
        parts["cm"]["metadata"]["name"],
        "sidecar.toml",
    )
    assert mounted_file(pod, sidecar, str(parts["tokens_file"])) == (
        parts["secret"]["metadata"]["name"],
        "tokens.toml",
    )
    # Listening where the pod's ports and probes say, on every interface of the pod.
    assert settings.proxy.host == settings.control.host == "0.0.0.0"
    assert {p["containerPort"] for p in sidecar["ports"]} >= {settings.proxy.port}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = sidecar[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(sidecar, get["port"]) == settings.control.port
    assert sidecar["resources"]["requests"] and sidecar["resources"]["limits"]
    # The model server: on loopback, no port declared, reached through the sidecar only.
    env = {e["name"]: e.get("value") for e in model["env"]}
    assert env["MLSERVER_HOST"] == "127.0.0.1"
    assert settings.proxy.upstream == f"http://127.0.0.1:{env['MLSERVER_HTTP_PORT']}"
    assert "ports" not in model
    # Both read the same model file.
    assert settings.model.artifact is not None
    assert str(settings.model.artifact) == env["MLSERVER_MODEL_URI"]
    assert settings.model.favourable_label in settings.model.class_labels
    # The spool (and its crash ledger) on a volume of the pod, not the container's layer.
    data = [m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "data"]
    assert settings.sink.kind == "kafka"
    assert len(data) == 1 and str(settings.spool.directory).startswith(data[0] + "/")
    assert str(settings.review.db_path).startswith(data[0] + "/")


def test_the_service_carries_the_data_plane_and_never_the_model_server(tmp_path: Path) -> None:
    settings, _ = sidecar_settings("sidecar-deployment.yaml", tmp_path)
    (deployment,) = by_kind("sidecar-deployment.yaml", "Deployment")
    pod = pod_of(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in by_kind("sidecar-deployment.yaml", "Service")}
    targets = set()
    for s in services.values():
        assert s["spec"]["selector"].items() <= labels.items()
        for p in s["spec"]["ports"]:
            targets.add(port_number(container(pod, "sidecar"), p["targetPort"]))
    (data,) = services["credit"]["spec"]["ports"]
    assert port_number(container(pod, "sidecar"), data["targetPort"]) == settings.proxy.port
    assert targets == {settings.proxy.port, settings.control.port}


def test_the_hub_runs_two_replicas_with_its_database_url_from_a_secret(tmp_path: Path) -> None:
    (cm,) = by_kind("hub.yaml", "ConfigMap")
    (secret,) = by_kind("hub.yaml", "Secret")
    (deployment,) = by_kind("hub.yaml", "Deployment")
    (service,) = by_kind("hub.yaml", "Service")
    pod = pod_of(deployment)
    (hub,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert hub["args"] == ["sidecar", "hub", "--config", "/etc/sidecar/hub.toml"]
    assert mounted_file(pod, hub, "/etc/sidecar/hub.toml") == (cm["metadata"]["name"], "hub.toml")
    (url,) = [e for e in hub["env"] if e["name"] == "SIDECAR_HUB__DATABASE_URL"]
    ref = url["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]].startswith("postgresql://")
    assert "database_url" not in cm["data"]["hub.toml"]  # never in the ConfigMap
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = hub[probe]["httpGet"]
        assert get["path"] == path and port_number(hub, get["port"]) == 8082
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8082 and port_number(hub, port["targetPort"]) == 8082
    assert (
        service["spec"]["selector"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    # The hub reads the sidecars' settings tree: its keys must exist there.
    config = tmp_path / "hub.toml"
    config.write_text(cm["data"]["hub.toml"])
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(secret["stringData"]["tokens.toml"])
    env = {"SIDECAR_HUB__DATABASE_URL": secret["stringData"][ref["key"]]}
    assert mounted_file(pod, hub, "/etc/sidecar/secrets/tokens.toml") == (
        secret["metadata"]["name"],
        "tokens.toml",
    )
    if "hub" not in Settings.model_fields:
        # The [hub] section arrives with the hub (issue 16); until then the rest is checked.
        text = cm["data"]["hub.toml"]
        hubless = text.split("[kafka]", 1)[1]
        config.write_text("[kafka]" + hubless)
        env = {}
    settings = load_settings(config, environ=env, overrides={"auth": {"tokens_file": str(tokens)}})
    assert TokenTable.from_settings(settings.auth)
    hub_settings = getattr(settings, "hub", None)
    if hub_settings is not None:
        assert hub_settings.port == 8082 and hub_settings.host == "0.0.0.0"
        assert hub_settings.database_url is not None
