"""The Helm chart (charts/sseplane), linted and rendered by the real Helm engine.

No cluster and no helm binary: PyPI `helm-python-sdk` embeds Helm's Go SDK
(Helm v4) and renders offline. Every rendered object is validated against the
Kubernetes OpenAPI schemas shipped by PyPI `kubernetes-validate` (strict: no
unknown fields); ChannelPolicy objects against the CRD's own openAPIV3Schema.

    pip install -r tests/chart/requirements.txt
    python3 -m pytest -q tests/chart
"""

from __future__ import annotations

import base64
import copy
import functools
import importlib.util
import re
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sseplane"
# The Kubernetes version whose schemas the manifests are validated against,
# and the oldest one the chart supports (Chart.yaml kubeVersion: preStop sleep).
K8S_VERSION = "1.33"
K8S_MIN_VERSION = "1.30"
RELEASE = "sseplane"
NAMESPACE = "sseplane"


def _load_render_install():
    spec = importlib.util.spec_from_file_location(
        "render_install", ROOT / "scripts" / "render-install.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_install = _load_render_install()


def example_policies() -> list[dict]:
    """The ChannelPolicy documents of manifests/examples/."""
    docs = []
    for path in sorted((ROOT / "manifests" / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


# The value sets linted, rendered and validated below.
VALUE_SETS: dict[str, dict] = {
    "default": {},
    "redis-external": {"redis": {"enabled": False, "url": "redis://redis.data:6379/0"}},
    "redis-secret": {
        "redis": {"enabled": False, "existingSecret": "sseplane-redis", "existingSecretKey": "url"}
    },
    "jaeger-on": {"jaeger": {"enabled": True}},
    "otel-endpoint": {
        "jaeger": {"enabled": False},
        "otel": {"endpoint": "http://otel-collector.observability:4317", "protocol": "grpc"},
    },
    "cluster-scoped": {"rbac": {"clusterScoped": True}},
    "autoscaling": {"autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80}},
    "ingress": {
        "ingress": {
            "enabled": True,
            "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
            "hosts": [{"host": "events.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "events-tls", "hosts": ["events.example.com"]}],
        }
    },
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "single-replica-in-memory": {"replicaCount": 1, "redis": {"enabled": False}},
    "no-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}},
    "all-examples-as-list": {
        "policies": [{"name": d["metadata"]["name"], "spec": d["spec"]} for d in example_policies()]
    },
    # Token auth and connection limits.
    "auth-generated-offline": {"auth": {"generateOffline": True, "adminToken": {"generate": True}}},
    "auth-existing-secret": {
        "auth": {"existingSecret": "sseplane-jwt", "secretKeys": {"jwtSecret": "hs256"},
                 "audience": "events", "issuer": "https://auth.example.com", "leeway": "30s",
                 "cookieName": "events_token"}
    },
    "auth-public-keys": {
        "auth": {"publicKey": {"existingSecret": "sseplane-pem", "key": "rsa.pub"},
                 "jwks": {"existingConfigMap": "sseplane-jwks"}}
    },
    "auth-off": {"auth": {"enabled": False}},
    "admin-token-secret": {"auth": {"adminToken": {"existingSecret": "sseplane-admin", "key": "token"}}},
    "limits": {"limits": {"maxStreams": 20000, "maxStreamsPerClient": 50, "newChannelsPerSecond": 5,
                          "bodyTimeout": "30s", "idleTimeout": "1m30s", "maxIdleConnections": 4096}},
    "everything-on": {
        "jaeger": {"enabled": True},
        "rbac": {"clusterScoped": True},
        "autoscaling": {"enabled": True},
        "ingress": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "extraEnv": [{"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_always_on"}],
    },
}


@functools.cache
def _render_cached(key: str, release: str, namespace: str):
    values = VALUE_SETS[key]
    return render_install.render_manifests(
        copy.deepcopy(values) or None, release=release, namespace=namespace
    )


def render(values: dict | str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Rendered objects (deep copies) of a named value set or of ad-hoc values."""
    if isinstance(values, str):
        items = _render_cached(values, release, namespace)
    else:
        items = render_install.render_manifests(
            copy.deepcopy(values), release=release, namespace=namespace
        )
    return [copy.deepcopy(obj) for _, _, obj in items]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def sseplane_container(objs: list[dict], name: str = RELEASE) -> dict:
    deploy = one(objs, "Deployment", name)
    (container,) = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "sseplane"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    env = {}
    for item in container.get("env", []):
        assert item["name"] not in env, f"{item['name']} set twice"
        env[item["name"]] = item
    return env


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9]+)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def render_error(values: dict) -> str:
    """The error Helm gives for values the chart refuses (render raises)."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


# --------------------------------------------------------------------------
# helm lint


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_passes(name):
    report = helm.lint(
        CHART, copy.deepcopy(VALUE_SETS[name]) or None, strict=True, kube_version=f"v{K8S_VERSION}.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_helm_lint_passes_at_the_oldest_supported_kubernetes():
    report = helm.lint(CHART, strict=True, kube_version=f"v{K8S_MIN_VERSION}.0")
    assert not [m for m in report["messages"] if m["severity"] >= 2] and not report["errors"], report


# --------------------------------------------------------------------------
# Schema validation of every rendered object


def _nullable_to_json_schema(node):
    """OpenAPI `nullable: true` -> JSON Schema type [T, "null"], recursively."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_json_schema(v) for k, v in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def channel_policy_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((CHART / "crds" / "channelpolicy.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = _nullable_to_json_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_channel_policy(obj: dict) -> None:
    assert obj["apiVersion"] == "sseplane.dev/v1alpha1"
    name = obj["metadata"]["name"]
    assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, name
    assert obj["metadata"].get("namespace"), "namespaced resource without a namespace"
    errors = sorted(channel_policy_validator().iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # The CRD's one CEL rule (x-kubernetes-validations), which jsonschema cannot run.
    for event_type in obj["spec"].get("allowedEventTypes") or []:
        assert not event_type.startswith("sseplane."), event_type


SKIPPED_KINDS = {
    "ServiceMonitor": (
        "ServiceMonitor (monitoring.coreos.com/v1) is a Prometheus Operator custom "
        "resource: kubernetes-validate ships no schema for it and its CRD is not "
        "vendored here; test_service_monitor_scrapes_the_admin_port checks its fields"
    ),
}


def validation_cases():
    cases = []
    for name in VALUE_SETS:
        for index, obj in enumerate(render(name)):
            cases.append(
                pytest.param(name, index, id=f"{name}/{obj['kind']}/{obj['metadata']['name']}")
            )
    for index, doc in enumerate(d for d in yaml.safe_load_all(
            (ROOT / "manifests" / "install.yaml").read_text()) if d):
        cases.append(pytest.param("install.yaml", index, id=f"install.yaml/{doc['kind']}/{doc['metadata']['name']}"))
    return cases


def _objects_for(name: str) -> list[dict]:
    if name == "install.yaml":
        return [d for d in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if d]
    return render(name)


@pytest.mark.parametrize(("name", "index"), validation_cases())
def test_rendered_object_matches_its_schema(name, index):
    obj = _objects_for(name)[index]
    if obj["kind"] in SKIPPED_KINDS:
        pytest.skip(SKIPPED_KINDS[obj["kind"]])
    if obj["kind"] == "ChannelPolicy":
        validate_channel_policy(obj)
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}")


def test_default_render_validates_against_the_oldest_supported_kubernetes():
    for obj in render("default"):
        if obj["kind"] != "ChannelPolicy":
            kubernetes_validate.validate(obj, K8S_MIN_VERSION, strict=True)
    for _, text in render_install.crds():
        kubernetes_validate.validate(yaml.safe_load(text), K8S_MIN_VERSION, strict=True)


def test_the_validators_are_not_vacuous():
    deploy = one(render("default"), "Deployment", RELEASE)
    deploy["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)
    policy = one(render("default"), "ChannelPolicy")
    policy["spec"]["keepalive"] = "ten seconds"
    with pytest.raises(AssertionError):
        validate_channel_policy(policy)
    policy = one(render("default"), "ChannelPolicy")
    policy["spec"]["history"]["maxEvents"] = None  # nullable in the CRD
    validate_channel_policy(policy)


# --------------------------------------------------------------------------
# The Deployment: probes, env, draining, security


def test_probes_hit_the_admin_port():
    container = sseplane_container(render("default"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    expected = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ("admin", 9090), probe
    env = env_of(container)
    assert env["SSEPLANE_LISTEN"]["value"] == "0.0.0.0:8080"
    assert env["SSEPLANE_ADMIN_LISTEN"]["value"] == "0.0.0.0:9090"


def test_chart_metadata():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["name"] == "sseplane" and meta["type"] == "application"
    assert meta["description"] and meta["home"].startswith("https://")
    assert {"sse", "server-sent-events", "redis"} <= set(meta["keywords"])
    assert meta["kubeVersion"] == ">=1.30.0-0"  # lifecycle.preStop.sleep
    assert (CHART / ".helmignore").is_file()


def test_image_defaults_to_the_app_version():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert (meta["apiVersion"], meta["version"], meta["appVersion"]) == ("v2", "0.1.0", "0.1.0")
    container = sseplane_container(render("default"))
    assert container["image"] == f"sseplane:{meta['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    tagged = sseplane_container(render({"image": {"repository": "ghcr.io/acme/sseplane", "tag": "1.2.3"}}))
    assert tagged["image"] == "ghcr.io/acme/sseplane:1.2.3"


def test_pod_name_and_namespace_come_from_the_downward_api():
    env = env_of(sseplane_container(render("default")))
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_service_settings_and_default_policy_reach_the_environment():
    env = env_of(sseplane_container(render("default")))
    values = {k: v.get("value") for k, v in env.items()}
    assert values["SSEPLANE_LOG_FORMAT"] == "json"
    assert values["SSEPLANE_KUBE_POLICIES"] == "on"
    assert "SSEPLANE_WATCH_ALL_NAMESPACES" not in values
    assert values["SSEPLANE_SHUTDOWN_GRACE"] == "20s"
    assert values["OTEL_SERVICE_NAME"] == "sseplane"
    assert {k: values[k] for k in (
        "SSEPLANE_KEEPALIVE", "SSEPLANE_RETRY", "SSEPLANE_HISTORY_MAX_EVENTS",
        "SSEPLANE_HISTORY_MAX_AGE", "SSEPLANE_MAX_PAYLOAD_BYTES", "SSEPLANE_QUEUE_EVENTS")} == {
        "SSEPLANE_KEEPALIVE": "15s", "SSEPLANE_RETRY": "3s", "SSEPLANE_HISTORY_MAX_EVENTS": "1000",
        "SSEPLANE_HISTORY_MAX_AGE": "1h", "SSEPLANE_MAX_PAYLOAD_BYTES": "65536",
        "SSEPLANE_QUEUE_EVENTS": "1024"}

    custom = env_of(sseplane_container(render({
        "defaultPolicy": {"keepalive": "250ms", "retry": "1m30s", "historyMaxEvents": 1000000,
                          "historyMaxAge": "24h", "maxPayloadBytes": 16777216, "queueEvents": 64},
        "extraEnv": [{"name": "OTEL_TRACES_SAMPLER", "value": "always_on"}],
    })))
    assert custom["SSEPLANE_KEEPALIVE"]["value"] == "250ms"
    assert custom["SSEPLANE_RETRY"]["value"] == "1m30s"
    # Large numbers stay integers (not 1e+06) on their way through Helm.
    assert custom["SSEPLANE_HISTORY_MAX_EVENTS"]["value"] == "1000000"
    assert custom["SSEPLANE_MAX_PAYLOAD_BYTES"]["value"] == "16777216"
    assert custom["SSEPLANE_QUEUE_EVENTS"]["value"] == "64"
    assert custom["OTEL_TRACES_SAMPLER"]["value"] == "always_on"


def _config_rs_env() -> dict[str, str | None]:
    """SSEPLANE_* variables of `sseplane serve` with their defaults, from src/config.rs."""
    text = (ROOT / "src" / "config.rs").read_text()
    found = {}
    for match in re.finditer(r'env\s*=\s*"(SSEPLANE_\w+)"(?:,\s*(?:value_enum,\s*)?default_value(?:_t)?\s*=\s*"?([^",)\s]+)"?)?', text):
        found[match.group(1)] = match.group(2)
    assert "SSEPLANE_REDIS_URL" in found, "could not read src/config.rs"
    return found


def test_every_sseplane_variable_is_a_flag_of_the_binary():
    known = _config_rs_env()
    for name in VALUE_SETS:
        for var in env_of(sseplane_container(render(name))):
            if var.startswith("SSEPLANE_"):
                assert var in known, f"{var} ({name}) is not read by sseplane (src/config.rs)"


def test_the_default_policy_values_are_the_binarys_defaults():
    known = _config_rs_env()
    env = env_of(sseplane_container(render("default")))
    for var in ("SSEPLANE_KEEPALIVE", "SSEPLANE_RETRY", "SSEPLANE_HISTORY_MAX_EVENTS",
                "SSEPLANE_HISTORY_MAX_AGE", "SSEPLANE_MAX_PAYLOAD_BYTES", "SSEPLANE_QUEUE_EVENTS",
                "SSEPLANE_REDIS_PREFIX", "SSEPLANE_CORS_ORIGINS", "SSEPLANE_MAX_CHANNELS_PER_STREAM",
                "SSEPLANE_LOG_LEVEL"):
        assert env[var]["value"] == known[var], f"{var}: chart {env[var]['value']!r}, binary {known[var]!r}"


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_termination_grace_outlasts_prestop_and_shutdown_grace(name):
    objs = render(name)
    pod = one(objs, "Deployment", RELEASE)["spec"]["template"]["spec"]
    container = sseplane_container(objs)
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert sleep >= 1
    assert "exec" not in container["lifecycle"]["preStop"], "no shell in a distroless image"
    grace = seconds(env_of(container)["SSEPLANE_SHUTDOWN_GRACE"]["value"])
    assert pod["terminationGracePeriodSeconds"] > sleep + grace


def test_the_chart_refuses_a_grace_period_too_short_to_drain():
    message = render_error({"terminationGracePeriodSeconds": 25})
    assert "terminationGracePeriodSeconds (25) must exceed" in message
    message = render_error({"shutdownGrace": "1m", "terminationGracePeriodSeconds": 60})
    assert "(65 s)" in message
    objs = render({"shutdownGrace": "1m", "terminationGracePeriodSeconds": 90})
    assert one(objs, "Deployment", RELEASE)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90


def test_security_context_is_non_root_with_a_read_only_root():
    objs = render("everything-on") + render("default")
    for deploy in find(objs, "Deployment"):
        pod = deploy["spec"]["template"]["spec"]
        for container in pod["containers"]:
            ctx = container["securityContext"]
            where = f"{deploy['metadata']['name']}/{container['name']}"
            assert ctx["runAsNonRoot"] is True, where
            assert ctx["runAsUser"] != 0 and pod["securityContext"]["runAsUser"] != 0, where
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"]["drop"] == ["ALL"], where
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
    pod = one(render("default"), "Deployment", RELEASE)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert sseplane_container(render("default"))["securityContext"]["runAsUser"] == 65532
    assert sseplane_container(render("default"))["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    redis_pod = one(render("default"), "Deployment", f"{RELEASE}-redis")["spec"]["template"]["spec"]
    assert redis_pod["securityContext"]["runAsUser"] == 999


def test_replicas_spread_over_nodes():
    objs = render("default")
    pod = one(objs, "Deployment", RELEASE)["spec"]["template"]
    (constraint,) = pod["spec"]["topologySpreadConstraints"]
    assert constraint["topologyKey"] == "kubernetes.io/hostname"
    assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    assert constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]


# --------------------------------------------------------------------------
# Token auth (auth.*) and connection limits (limits.*)

AUTH_ENV = ("SSEPLANE_JWT_SECRET", "SSEPLANE_JWT_PUBLIC_KEY", "SSEPLANE_JWKS", "SSEPLANE_JWT_AUDIENCE",
            "SSEPLANE_JWT_ISSUER", "SSEPLANE_JWT_LEEWAY", "SSEPLANE_TOKEN_COOKIE")
AUTH_SECRET = f"{RELEASE}-auth"
KEYS_DIR = "/etc/sseplane/keys"


def secret_ref(env: dict, var: str) -> tuple[str, str]:
    ref = env[var]["valueFrom"]["secretKeyRef"]
    assert set(ref) == {"name", "key"}, ref  # not optional: a missing key keeps the pod from starting
    return ref["name"], ref["key"]


def pod_spec(objs: list[dict]) -> dict:
    return one(objs, "Deployment", RELEASE)["spec"]["template"]["spec"]


def test_auth_is_on_by_default_with_the_chart_managed_secret():
    objs = render("default")
    env = env_of(sseplane_container(objs))
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == (AUTH_SECRET, "jwt-secret")
    assert env["SSEPLANE_JWT_LEEWAY"]["value"] == "5s"
    assert env["SSEPLANE_TOKEN_COOKIE"]["value"] == "sseplane_token"
    for var in ("SSEPLANE_JWT_PUBLIC_KEY", "SSEPLANE_JWKS", "SSEPLANE_JWT_AUDIENCE",
                "SSEPLANE_JWT_ISSUER", "SSEPLANE_ADMIN_TOKEN"):
        assert var not in env, var
    assert "auth-keys" not in {v["name"] for v in pod_spec(objs)["volumes"]}
    # Offline (lookup is empty: helm template, install.yaml) the random value
    # could not be kept across renders, so the Secret is left out and the
    # Deployment says how to create it.
    assert not find(objs, "Secret")
    (text,) = [t for _, t, o in render_install.render_manifests() if o["kind"] == "Deployment"
               and o["metadata"]["name"] == RELEASE]
    assert f"kubectl -n {NAMESPACE} create secret generic {AUTH_SECRET}" in text
    assert '--from-literal=jwt-secret="$(openssl rand -hex 24)"' in text


def _generated(values: dict) -> tuple[dict, dict[str, str]]:
    objs = render(values)
    secret = one(objs, "Secret", AUTH_SECRET)
    assert secret["type"] == "Opaque" and secret["metadata"]["namespace"] == NAMESPACE
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert "stringData" not in secret
    return objs, {k: base64.b64decode(v, validate=True).decode() for k, v in secret["data"].items()}


def test_the_generated_secret_holds_random_48_character_values():
    objs, data = _generated(VALUE_SETS["auth-generated-offline"])
    assert set(data) == {"jwt-secret", "admin-token"}
    for key, value in data.items():
        assert re.fullmatch(r"[A-Za-z0-9]{48}", value), key
    assert data["jwt-secret"] != data["admin-token"]
    env = env_of(sseplane_container(objs))
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == (AUTH_SECRET, "jwt-secret")
    assert secret_ref(env, "SSEPLANE_ADMIN_TOKEN") == (AUTH_SECRET, "admin-token")
    # A new value on every offline render (lookup finds nothing to keep).
    _, again = _generated(VALUE_SETS["auth-generated-offline"])
    assert again["jwt-secret"] != data["jwt-secret"]
    # Only what is asked for: the admin token alone, with auth off.
    objs, data = _generated({"auth": {"enabled": False, "generateOffline": True, "adminToken": {"generate": True}}})
    assert set(data) == {"admin-token"}
    env = env_of(sseplane_container(objs))
    assert "SSEPLANE_JWT_SECRET" not in env and secret_ref(env, "SSEPLANE_ADMIN_TOKEN") == (AUTH_SECRET, "admin-token")
    # Nothing to generate: no Secret, even with generateOffline.
    assert not find(render({"auth": {"generateOffline": True, "existingSecret": "mine"}}), "Secret")


def test_the_generated_secret_keeps_the_value_lookup_finds():
    template = (CHART / "templates" / "auth-secret.yaml").read_text()
    assert '(lookup "v1" "Secret" .Release.Namespace $name).data' in template
    assert "index $existing $key | default (randAlphaNum 48 | b64enc)" in template


def test_the_secret_name_follows_the_fullname():
    objs = render({"auth": {"generateOffline": True}}, release="demo", namespace="apps")
    one(objs, "Secret", "demo-sseplane-auth")
    env = env_of(sseplane_container(objs, "demo-sseplane"))
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == ("demo-sseplane-auth", "jwt-secret")


def test_an_existing_secret_replaces_the_generated_one():
    objs = render("auth-existing-secret")
    assert not find(objs, "Secret")
    env = env_of(sseplane_container(objs))
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == ("sseplane-jwt", "hs256")
    assert env["SSEPLANE_JWT_AUDIENCE"]["value"] == "events"
    assert env["SSEPLANE_JWT_ISSUER"]["value"] == "https://auth.example.com"
    assert env["SSEPLANE_JWT_LEEWAY"]["value"] == "30s"
    assert env["SSEPLANE_TOKEN_COOKIE"]["value"] == "events_token"
    assert "SSEPLANE_JWT_PUBLIC_KEY" not in env and "SSEPLANE_JWKS" not in env
    text = "\n".join(t for _, t, _ in render_install.render_manifests(VALUE_SETS["auth-existing-secret"]))
    assert "create secret generic" not in text
    # The default key name.
    env = env_of(sseplane_container(render({"auth": {"existingSecret": "mine"}})))
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == ("mine", "jwt-secret")


def _key_files(objs: list[dict]) -> dict[str, tuple[str, str, str]]:
    """Files of the auth-keys volume: path in the pod -> (kind, object name, key)."""
    pod = pod_spec(objs)
    (mount,) = [m for m in sseplane_container(objs)["volumeMounts"] if m["name"] == "auth-keys"]
    assert mount["readOnly"] is True and "subPath" not in mount  # subPath mounts never update
    (volume,) = [v for v in pod["volumes"] if v["name"] == "auth-keys"]
    files = {}
    for source in volume["projected"]["sources"]:
        ((kind, ref),) = source.items()
        for item in ref["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = (kind, ref["name"], item["key"])
    return files


def test_public_keys_are_mounted_as_files_the_flags_point_to():
    objs = render("auth-public-keys")
    env = env_of(sseplane_container(objs))
    files = _key_files(objs)
    assert files == {
        env["SSEPLANE_JWT_PUBLIC_KEY"]["value"]: ("secret", "sseplane-pem", "rsa.pub"),
        env["SSEPLANE_JWKS"]["value"]: ("configMap", "sseplane-jwks", "jwks.json"),
    }
    assert env["SSEPLANE_JWT_PUBLIC_KEY"]["value"] == f"{KEYS_DIR}/public-key.pem"
    assert env["SSEPLANE_JWKS"]["value"] == f"{KEYS_DIR}/jwks.json"
    # Public keys only: no HS256 secret, generated or not.
    assert "SSEPLANE_JWT_SECRET" not in env and not find(objs, "Secret")
    assert env["SSEPLANE_JWT_LEEWAY"]["value"] == "5s"
    # The other way round, and combined with an HS256 secret (sseplane takes all three).
    objs = render({"auth": {"existingSecret": "hs", "publicKey": {"existingConfigMap": "pem"},
                            "jwks": {"existingSecret": "jwks", "key": "keys.json"}}})
    env = env_of(sseplane_container(objs))
    assert _key_files(objs) == {
        f"{KEYS_DIR}/public-key.pem": ("configMap", "pem", "public.pem"),
        f"{KEYS_DIR}/jwks.json": ("secret", "jwks", "keys.json"),
    }
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == ("hs", "jwt-secret")
    # A JWKS alone.
    objs = render({"auth": {"jwks": {"existingConfigMap": "jwks"}}})
    env = env_of(sseplane_container(objs))
    assert set(_key_files(objs)) == {env["SSEPLANE_JWKS"]["value"]}
    assert "SSEPLANE_JWT_PUBLIC_KEY" not in env and "SSEPLANE_JWT_SECRET" not in env


def test_auth_off_sets_no_key():
    objs = render("auth-off")
    env = env_of(sseplane_container(objs))
    for var in AUTH_ENV + ("SSEPLANE_ADMIN_TOKEN",):
        assert var not in env, var
    assert not find(objs, "Secret")
    assert "auth-keys" not in {v["name"] for v in pod_spec(objs)["volumes"]}
    assert "Auth: OFF" in _notes(VALUE_SETS["auth-off"])


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"auth": {"enabled": False, "existingSecret": "mine"}}, "auth.enabled=false turns token auth off"),
        ({"auth": {"enabled": False, "jwks": {"existingConfigMap": "jwks"}}}, "auth.enabled=false"),
        ({"auth": {"publicKey": {"existingSecret": "a", "existingConfigMap": "b"}}},
         "auth.publicKey: set existingSecret or existingConfigMap, not both"),
        ({"auth": {"jwks": {"existingSecret": "a", "existingConfigMap": "b"}}}, "auth.jwks: set existingSecret"),
        ({"auth": {"adminToken": {"existingSecret": "a", "generate": True}}},
         "auth.adminToken: set existingSecret or generate, not both"),
    ],
)
def test_the_chart_refuses_contradictory_auth_values(values, complaint):
    assert complaint in render_error(values)


def test_admin_token_wiring():
    objs = render("admin-token-secret")
    env = env_of(sseplane_container(objs))
    assert secret_ref(env, "SSEPLANE_ADMIN_TOKEN") == ("sseplane-admin", "token")
    assert secret_ref(env, "SSEPLANE_JWT_SECRET") == (AUTH_SECRET, "jwt-secret")
    assert "SSEPLANE_ADMIN_TOKEN" not in env_of(sseplane_container(render("default")))
    # Probes and the ServiceMonitor stay on endpoints the admin token does not guard.
    for name in ("admin-token-secret", "auth-generated-offline"):
        container = sseplane_container(render(name))
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["path"] in ("/healthz", "/readyz"), probe
    monitor = one(render({"auth": {"adminToken": {"generate": True}}, "serviceMonitor": {"enabled": True}}),
                  "ServiceMonitor")
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    # Offline, the Deployment says how to create the managed Secret with both keys.
    text = "\n".join(t for _, t, _ in render_install.render_manifests({"auth": {"adminToken": {"generate": True}}}))
    assert "--from-literal=jwt-secret=" in text and "--from-literal=admin-token=" in text


def test_the_auth_and_limit_defaults_are_the_binarys_defaults():
    known = _config_rs_env()
    cookie = re.search(r'DEFAULT_COOKIE: &str = "([^"]+)"',
                       (ROOT / "src" / "auth" / "credentials.rs").read_text()).group(1)
    env = {k: v.get("value") for k, v in env_of(sseplane_container(render("default"))).items()}
    assert env["SSEPLANE_JWT_LEEWAY"] == known["SSEPLANE_JWT_LEEWAY"]
    assert env["SSEPLANE_TOKEN_COOKIE"] == cookie
    assert env["SSEPLANE_BODY_TIMEOUT"] == known["SSEPLANE_BODY_TIMEOUT"]
    assert env["SSEPLANE_MAX_STREAMS_PER_CLIENT"] == known["SSEPLANE_MAX_STREAMS_PER_CLIENT"]
    assert env["SSEPLANE_NEW_CHANNELS_PER_SECOND"] == known["SSEPLANE_NEW_CHANNELS_PER_SECOND"] == "20"
    assert env["SSEPLANE_IDLE_TIMEOUT"] == known["SSEPLANE_IDLE_TIMEOUT"] == "10s"
    # The idle cap's default is a constant of the lean HTTP path.
    assert known["SSEPLANE_MAX_IDLE_CONNECTIONS"] == "crate::http::lean::DEFAULT_MAX_IDLE"
    max_idle = re.search(r"pub const DEFAULT_MAX_IDLE: usize = (\d+);",
                         (ROOT / "src" / "http" / "lean" / "mod.rs").read_text()).group(1)
    assert env["SSEPLANE_MAX_IDLE_CONNECTIONS"] == max_idle == "128"
    # No default in the binary (derived from the open-files limit): not set.
    assert known["SSEPLANE_MAX_STREAMS"] is None and "SSEPLANE_MAX_STREAMS" not in env


def test_connection_limits_reach_the_environment():
    env = {k: v.get("value") for k, v in env_of(sseplane_container(render("limits"))).items()}
    assert (env["SSEPLANE_MAX_STREAMS"], env["SSEPLANE_MAX_STREAMS_PER_CLIENT"], env["SSEPLANE_BODY_TIMEOUT"]) == \
        ("20000", "50", "30s")
    # 0 means "no limit", not "unset"; large numbers stay integers.
    env = env_of(sseplane_container(render({"limits": {"maxStreams": 0, "maxStreamsPerClient": 0}})))
    assert env["SSEPLANE_MAX_STREAMS"]["value"] == "0" and env["SSEPLANE_MAX_STREAMS_PER_CLIENT"]["value"] == "0"
    env = env_of(sseplane_container(render({"limits": {"maxStreams": 1000000}})))
    assert env["SSEPLANE_MAX_STREAMS"]["value"] == "1000000"


def test_channel_creation_and_idle_connection_limits_reach_the_environment():
    names = ("SSEPLANE_NEW_CHANNELS_PER_SECOND", "SSEPLANE_IDLE_TIMEOUT", "SSEPLANE_MAX_IDLE_CONNECTIONS")
    env = {k: v.get("value") for k, v in env_of(sseplane_container(render("limits"))).items()}
    assert tuple(env[n] for n in names) == ("5", "1m30s", "4096")
    env = {k: v.get("value") for k, v in env_of(sseplane_container(render("default"))).items()}
    assert tuple(env[n] for n in names) == ("20", "10s", "128")
    # 0 means "no limit" / "no cap", not "unset"; large numbers stay integers.
    env = env_of(sseplane_container(render({"limits": {"newChannelsPerSecond": 0, "maxIdleConnections": 0}})))
    assert env["SSEPLANE_NEW_CHANNELS_PER_SECOND"]["value"] == "0"
    assert env["SSEPLANE_MAX_IDLE_CONNECTIONS"]["value"] == "0"
    env = env_of(sseplane_container(render({"limits": {"newChannelsPerSecond": 4294967295,
                                                       "maxIdleConnections": 1000000}})))
    assert env["SSEPLANE_NEW_CHANNELS_PER_SECOND"]["value"] == "4294967295"
    assert env["SSEPLANE_MAX_IDLE_CONNECTIONS"]["value"] == "1000000"
    # No magic behind the ingress: publishers there share one budget unless
    # their tokens carry a `sub` (values.yaml says so), the default stays.
    env = env_of(sseplane_container(render("ingress")))
    assert env["SSEPLANE_NEW_CHANNELS_PER_SECOND"]["value"] == "20"


def test_behind_the_ingress_the_per_client_limit_is_off_unless_set():
    env = env_of(sseplane_container(render("ingress")))
    assert env["SSEPLANE_MAX_STREAMS_PER_CLIENT"]["value"] == "0"
    assert "per-client stream limit is off" in _notes(VALUE_SETS["ingress"])
    env = env_of(sseplane_container(render({"ingress": {"enabled": True}, "limits": {"maxStreamsPerClient": 5000}})))
    assert env["SSEPLANE_MAX_STREAMS_PER_CLIENT"]["value"] == "5000"


# --------------------------------------------------------------------------
# Redis and tracing wiring


def test_bundled_redis_is_the_default_backplane():
    objs = render("default", release="demo", namespace="apps")
    env = env_of(sseplane_container(objs, "demo-sseplane"))
    assert env["SSEPLANE_REDIS_URL"]["value"] == "redis://demo-redis:6379"
    service = one(objs, "Service", "demo-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    redis = one(objs, "Deployment", "demo-redis")
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    # The sseplane Services must not select the Redis pods, nor Redis the sseplane pods.
    sseplane_labels = one(objs, "Deployment", "demo-sseplane")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= sseplane_labels.items()
    assert not one(objs, "Service", "demo-sseplane")["spec"]["selector"].items() <= \
        redis["spec"]["template"]["metadata"]["labels"].items()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7-alpine"
    args = container["args"]
    assert args[args.index("--bind") + 1] == "0.0.0.0"
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"


def test_external_redis_url():
    objs = render("redis-external")
    env = env_of(sseplane_container(objs))
    assert env["SSEPLANE_REDIS_URL"] == {"name": "SSEPLANE_REDIS_URL", "value": "redis://redis.data:6379/0"}
    assert not find(objs, "Deployment", f"{RELEASE}-redis") and not find(objs, "Service", f"{RELEASE}-redis")


def test_redis_url_from_an_existing_secret():
    objs = render("redis-secret")
    env = env_of(sseplane_container(objs))
    assert env["SSEPLANE_REDIS_URL"] == {
        "name": "SSEPLANE_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "sseplane-redis", "key": "url"}},
    }
    assert not find(objs, "Deployment", f"{RELEASE}-redis")


def test_one_replica_without_redis_runs_the_in_memory_backplane():
    objs = render("single-replica-in-memory")
    assert "SSEPLANE_REDIS_URL" not in env_of(sseplane_container(objs))
    assert not find(objs, "PodDisruptionBudget")


def test_contradictory_redis_settings_are_refused():
    assert "several replicas need a shared Redis" in render_error({"redis": {"enabled": False}})
    assert "several replicas need a shared Redis" in render_error(
        {"replicaCount": 1, "autoscaling": {"enabled": True}, "redis": {"enabled": False}})
    assert "redis.enabled bundles a Redis" in render_error({"redis": {"url": "redis://elsewhere:6379"}})
    assert "not both" in render_error(
        {"redis": {"enabled": False, "url": "redis://a:6379", "existingSecret": "s"}})
    assert "existingSecretKey" in render_error(
        {"redis": {"enabled": False, "existingSecret": "s", "existingSecretKey": ""}})


def test_jaeger_on_receives_the_traces():
    objs = render("jaeger-on")
    env = env_of(sseplane_container(objs))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == f"http://{RELEASE}-jaeger:4317"
    service = one(objs, "Service", f"{RELEASE}-jaeger")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "otlp-grpc": 4317, "otlp-http": 4318, "ui": 16686}
    jaeger = one(objs, "Deployment", f"{RELEASE}-jaeger")
    (container,) = jaeger["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("jaegertracing/all-in-one:")
    assert {"name": "COLLECTOR_OTLP_ENABLED", "value": "true"} in container["env"]
    assert {4317, 4318, 16686} <= {p["containerPort"] for p in container["ports"]}
    assert service["spec"]["selector"].items() <= jaeger["spec"]["template"]["metadata"]["labels"].items()


def test_jaeger_off_with_an_otel_endpoint():
    objs = render("otel-endpoint")
    env = env_of(sseplane_container(objs))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc"
    assert not find(objs, "Deployment", f"{RELEASE}-jaeger")


def test_no_tracing_endpoint_by_default():
    objs = render("default")
    env = env_of(sseplane_container(objs))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert not find(objs, "Deployment", f"{RELEASE}-jaeger") and not find(objs, "Service", f"{RELEASE}-jaeger")


# --------------------------------------------------------------------------
# RBAC


POLICY_RULES = [
    {"apiGroups": ["sseplane.dev"], "resources": ["channelpolicies"], "verbs": ["list", "watch"]},
    {"apiGroups": ["sseplane.dev"], "resources": ["channelpolicies/status"], "verbs": ["patch"]},
]
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
]


def _normalised(rules):
    return sorted(
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"])),
         tuple(r.get("resourceNames", ())), tuple(r.get("nonResourceURLs", ())))
        for r in rules
    )


def test_rbac_is_exactly_what_the_watcher_needs():
    objs = render("default")
    role = one(objs, "Role", RELEASE)
    assert _normalised(role["rules"]) == _normalised(POLICY_RULES + LEASE_RULES)
    assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
    binding = one(objs, "RoleBinding", RELEASE)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": RELEASE}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]


def test_rbac_matches_the_readme():
    # The permissions block moved from README.md to the Kubernetes page.
    page = ROOT / "docs" / "kubernetes.md"
    match = re.search(r"needs exactly these permissions.*?```yaml\n(.*?)```", page.read_text(), re.DOTALL)
    assert match, f"{page} has no 'needs exactly these permissions' yaml block"
    assert _normalised(yaml.safe_load(match.group(1))["rules"]) == _normalised(POLICY_RULES + LEASE_RULES)


def test_cluster_scoped_rbac():
    objs = render("cluster-scoped")
    cluster_role = one(objs, "ClusterRole")
    assert _normalised(cluster_role["rules"]) == _normalised(POLICY_RULES)
    assert "namespace" not in cluster_role["metadata"]
    assert _normalised(one(objs, "Role", RELEASE)["rules"]) == _normalised(LEASE_RULES)
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    env = env_of(sseplane_container(objs))
    assert env["SSEPLANE_WATCH_ALL_NAMESPACES"]["value"] == "true"


def test_rbac_create_false_renders_no_rbac():
    objs = render("no-rbac")
    for kind in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"):
        assert not find(objs, kind), kind
    pod = one(objs, "Deployment", RELEASE)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing"


# --------------------------------------------------------------------------
# Services, Ingress, PDB, HPA, ServiceMonitor


def test_services_for_the_public_and_admin_apis():
    objs = render("default")
    pod_labels = one(objs, "Deployment", RELEASE)["spec"]["template"]["metadata"]["labels"]
    public = one(objs, "Service", RELEASE)
    admin = one(objs, "Service", f"{RELEASE}-admin")
    assert public["spec"]["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert admin["spec"]["ports"] == [{"name": "admin", "port": 9090, "targetPort": "admin", "protocol": "TCP"}]
    for service in (public, admin):
        assert service["spec"]["selector"].items() <= pod_labels.items()


def test_ingress_turns_off_buffering_for_sse():
    objs = render("ingress")
    ingress = one(objs, "Ingress", RELEASE)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["events.example.com"], "secretName": "events-tls"}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "events.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": RELEASE, "port": {"name": "http"}}}
    # A rule without a host, and the user's annotations win over the chart's.
    override = one(render({"ingress": {"enabled": True, "hosts": [{"paths": [{"path": "/v1"}]}],
                                       "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "86400"}}}),
                   "Ingress")
    assert override["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "86400"
    assert override["spec"]["rules"] == [{"http": {"paths": [{
        "path": "/v1", "pathType": "Prefix",
        "backend": {"service": {"name": RELEASE, "port": {"name": "http"}}}}]}}]
    kubernetes_validate.validate(override, K8S_VERSION, strict=True)
    assert not find(render("default"), "Ingress")


def test_pod_disruption_budget_only_with_several_replicas():
    pdb = one(render("default"), "PodDisruptionBudget", RELEASE)
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = one(render("default"), "Deployment", RELEASE)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not find(render({"replicaCount": 1}), "PodDisruptionBudget")
    assert not find(render({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_autoscaling_takes_over_the_replica_count():
    objs = render("autoscaling")
    assert "replicas" not in one(objs, "Deployment", RELEASE)["spec"]
    hpa = one(objs, "HorizontalPodAutoscaler", RELEASE)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": 70, "memory": 80}
    assert find(objs, "PodDisruptionBudget")
    default = render("default")
    assert one(default, "Deployment", RELEASE)["spec"]["replicas"] == 2
    assert not find(default, "HorizontalPodAutoscaler")


def test_service_monitor_scrapes_the_admin_port():
    objs = render("service-monitor")
    monitor = one(objs, "ServiceMonitor", RELEASE)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("admin", "/metrics")
    assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
    selector = monitor["spec"]["selector"]["matchLabels"]
    admin = one(objs, "Service", f"{RELEASE}-admin")
    assert selector.items() <= admin["metadata"]["labels"].items()
    assert not selector.items() <= one(objs, "Service", RELEASE)["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert not find(render("default"), "ServiceMonitor")


# --------------------------------------------------------------------------
# ChannelPolicies and the CRD


def test_the_default_values_carry_the_game_example():
    (policy,) = find(render("default"), "ChannelPolicy")
    game = next(d for d in example_policies() if d["metadata"]["name"] == "game-player-joined")
    assert policy["metadata"]["name"] == "game-player-joined"
    assert policy["metadata"]["namespace"] == NAMESPACE
    assert policy["spec"] == game["spec"]


def test_policies_as_a_list_or_a_map():
    rendered = {p["metadata"]["name"]: p["spec"] for p in find(render("all-examples-as-list"), "ChannelPolicy")}
    assert rendered == {d["metadata"]["name"]: d["spec"] for d in example_policies()}
    # A map merges with the default example; null removes an entry; [] means none.
    names = [p["metadata"]["name"] for p in find(
        render({"policies": {"orders": {"channels": ["orders:*"], "priority": 5}}}), "ChannelPolicy")]
    assert names == ["game-player-joined", "orders"]
    assert not find(render({"policies": {"game-player-joined": None}}), "ChannelPolicy")
    assert not find(render({"policies": []}), "ChannelPolicy")
    labelled = one(render({"policies": [{"name": "x", "spec": {"channels": ["x"]},
                                         "labels": {"team": "games"}}]}), "ChannelPolicy")
    assert labelled["metadata"]["labels"]["team"] == "games"


def test_the_chart_crd_is_the_generated_one():
    chart_crd = (CHART / "crds" / "channelpolicy.yaml").read_bytes()
    assert chart_crd == (ROOT / "manifests" / "crds" / "channelpolicy.yaml").read_bytes(), (
        "charts/sseplane/crds/channelpolicy.yaml differs from manifests/crds/channelpolicy.yaml; "
        "regenerate both with `cargo run -- crd`")
    crds = render_install.crds()
    assert [source for source, _ in crds] == ["sseplane/crds/channelpolicy.yaml"]
    assert yaml.safe_load(crds[0][1]) == yaml.safe_load(chart_crd)


# --------------------------------------------------------------------------
# values.schema.json


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "three"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"replicaCont": 3}, "replicaCont"),
        ({"shutdownGrace": "20 seconds"}, "/shutdownGrace"),
        ({"defaultPolicy": {"keepalive": "15"}}, "/defaultPolicy/keepalive"),
        ({"containerPorts": {"http": 70000}}, "/containerPorts/http"),
        ({"service": {"port": 0}}, "/service/port"),
        ({"redis": {"enabeld": False}}, "enabeld"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"rbac": {"clusterScoped": "yes"}}, "/rbac/clusterScoped"),
        ({"policies": [{"name": "Not_A_Name", "spec": {"channels": ["a"]}}]}, "/policies"),
        ({"policies": {"empty": {"channels": []}}}, "/policies"),
        ({"auth": {"enabled": "yes"}}, "/auth/enabled"),
        ({"auth": {"enabeld": False}}, "enabeld"),
        ({"auth": {"existingSecret": "Not_A_Name"}}, "/auth/existingSecret"),
        ({"auth": {"secretKeys": {"jwtSecret": ""}}}, "/auth/secretKeys/jwtSecret"),
        ({"auth": {"jwks": {"existingConfigMap": 42}}}, "/auth/jwks/existingConfigMap"),
        ({"auth": {"publicKey": {"key": "a/b.pem"}}}, "/auth/publicKey/key"),
        ({"auth": {"leeway": "5 seconds"}}, "/auth/leeway"),
        ({"auth": {"cookieName": "my cookie"}}, "/auth/cookieName"),
        ({"auth": {"adminToken": {"generate": "true"}}}, "/auth/adminToken/generate"),
        ({"limits": {"maxStreams": -1}}, "/limits/maxStreams"),
        ({"limits": {"maxStreamsPerClient": "1000"}}, "/limits/maxStreamsPerClient"),
        ({"limits": {"bodyTimeout": 10}}, "/limits/bodyTimeout"),
        ({"limits": {"newChannelsPerSecond": "20"}}, "/limits/newChannelsPerSecond"),
        ({"limits": {"newChannelsPerSecond": -1}}, "/limits/newChannelsPerSecond"),
        ({"limits": {"newChannelsPerSecond": 2.5}}, "/limits/newChannelsPerSecond"),
        ({"limits": {"newChannelsPerSecond": 4294967296}}, "/limits/newChannelsPerSecond"),
        ({"limits": {"idleTimeout": 10}}, "/limits/idleTimeout"),
        ({"limits": {"idleTimeout": "10 seconds"}}, "/limits/idleTimeout"),
        ({"limits": {"maxIdleConnections": "128"}}, "/limits/maxIdleConnections"),
        ({"limits": {"maxIdleConnections": -1}}, "/limits/maxIdleConnections"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_values_schema_rejects_bad_values(values, complaint):
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{K8S_VERSION}.0")
    assert report["errors"], f"helm lint accepted {values}"
    assert any(complaint in e for e in report["errors"]), report["errors"]
    message = render_error(values)  # `helm template`/`install` refuse them as well
    assert "values don't meet the specifications of the schema" in message and complaint in message


def test_values_schema_is_draft_07_and_covers_every_value():
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def resolve(node):
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    def walk(value, node, path):
        node = resolve(node)
        if not isinstance(value, dict) or "properties" not in node:
            return
        for key, sub in value.items():
            assert key in node["properties"], f"{path}{key} is not described in values.schema.json"
            walk(sub, node["properties"][key], f"{path}{key}.")

    walk(values, schema, "")
    # Lint against the schema alone: the defaults pass it.
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)


# --------------------------------------------------------------------------
# NOTES.txt, install.yaml, kind


def _notes(values: dict | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return rendered["sseplane/templates/NOTES.txt"]


def test_notes_tell_how_to_try_it():
    notes = _notes()
    assert f"port-forward svc/{RELEASE} 8080:8080" in notes
    assert f"port-forward svc/{RELEASE}-admin 9090:9090" in notes
    assert "sseplane watch --url http://127.0.0.1:8080 --channel demo" in notes
    assert "curl -s http://127.0.0.1:8080/v1/publish" in notes
    assert "16686" not in notes
    with_jaeger = _notes({"jaeger": {"enabled": True}})
    assert f"port-forward svc/{RELEASE}-jaeger 16686:16686" in with_jaeger


def test_notes_tell_how_to_get_a_token():
    notes = _notes()
    assert "Auth: on." in notes
    assert (f"SECRET=$(kubectl -n {NAMESPACE} get secret {AUTH_SECRET} "
            "-o jsonpath='{.data.jwt-secret}' | base64 -d)") in notes
    assert """sseplane token --secret "$SECRET" """ in notes and "--subscribe 'game:*' --ttl 1h" in notes
    assert f"kubectl -n {NAMESPACE} exec deploy/{RELEASE} -- sseplane token " in notes
    assert """-H "Authorization: Bearer $TOKEN\"""" in notes
    assert "ADMIN_TOKEN" not in notes
    # Offline the Secret is not rendered, and the notes say how to create it.
    assert f"create secret generic {AUTH_SECRET}" in notes

    notes = _notes(VALUE_SETS["auth-generated-offline"])
    assert "create secret generic" not in notes
    assert (f"ADMIN_TOKEN=$(kubectl -n {NAMESPACE} get secret {AUTH_SECRET} "
            "-o jsonpath='{.data.admin-token}' | base64 -d)") in notes
    assert """curl -s -H "Authorization: Bearer $ADMIN_TOKEN" 'http://127.0.0.1:9090/v1/diagnostics""" in notes

    notes = _notes({"auth": {"existingSecret": "mine", "secretKeys": {"jwtSecret": "hs.key"},
                             "audience": "events", "issuer": "https://idp",
                             "adminToken": {"existingSecret": "adm", "key": "tok"}}})
    assert "get secret mine -o jsonpath='{.data.hs\\.key}'" in notes
    assert "--aud 'events' --iss 'https://idp'" in notes
    assert "get secret adm -o jsonpath='{.data.tok}'" in notes

    notes = _notes(VALUE_SETS["auth-public-keys"])
    assert "sseplane token --private-key" in notes and "--secret" not in notes


def test_install_yaml_is_the_default_render():
    committed = (ROOT / "manifests" / "install.yaml").read_text()
    fresh = render_install.render_install()
    assert committed == fresh, (
        "manifests/install.yaml is out of date with charts/sseplane; regenerate it with "
        "`python3 scripts/render-install.py` (pip install -r tests/chart/requirements.txt)")
    docs = [d for d in yaml.safe_load_all(committed) if d]
    # No generated Secret: its random value would be shared by everyone who
    # applies the file, and differ on every regeneration.
    assert not [d for d in docs if d["kind"] == "Secret"]
    (deploy,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == RELEASE]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert secret_ref(env_of(container), "SSEPLANE_JWT_SECRET") == (AUTH_SECRET, "jwt-secret")
    assert docs[0]["kind"] == "CustomResourceDefinition"
    assert docs[1] == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "sseplane"}}}
    for doc in docs[1:]:
        if doc["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_kind_cluster_has_a_control_plane_and_two_workers():
    config = yaml.safe_load((ROOT / "manifests" / "kind-cluster.yaml").read_text())
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4" and config["kind"] == "Cluster"
    assert sorted(n["role"] for n in config["nodes"]) == ["control-plane", "worker", "worker"]
