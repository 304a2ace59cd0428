"""The Helm chart (helm/authswitch), checked without a cluster.

The chart is linted and rendered by the Helm library itself (helm-python-sdk bundles it: no
helm binary), with the default values and with several non-default sets. Every rendered
Kubernetes object is validated in strict mode (unknown fields fail) against the schemas of the
oldest Kubernetes the chart supports and of a current one (kubernetes-validate). The two
Prometheus Operator kinds are CRDs, for which kubernetes-validate has no schema: they are
checked against a minimal strict transcription of the CRD fields the chart uses, and the rules
themselves by promtool (syntax, then unit tests that feed series and expect alerts). The
settings the chart renders are loaded by ``authswitch.config.Settings`` itself, so the chart
can never set a setting the application would reject.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.utils import floatToGoString

from authswitch import metrics
from authswitch.config import PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "authswitch"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
RELEASE, NAMESPACE = "rel", "payments"
FULLNAME = f"{RELEASE}-authswitch"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ("1.30", "1.37")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

Objects = list[dict[str, Any]]

# -- value sets -------------------------------------------------------------------------------

EVERYTHING_ON: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Payments"}},
    "report": {
        "enabled": True,
        "client": "acme",
        "prefix": "ACME",
        "volume": {"type": "persistentVolumeClaim", "storageClassName": "standard"},
    },
    "autoscaling": {"decisionRate": {"enabled": True}},
    "secrets": {"cardKeysAsFiles": True},
    "networkPolicy": {
        "ingress": {
            "grpcFrom": [
                {
                    "namespaceSelector": {"matchLabels": {"team": "gateway"}},
                    "podSelector": {"matchLabels": {"app": "network-gateway"}},
                }
            ]
        },
        "egress": {
            "postgres": {
                "ports": [{"port": 5432, "protocol": "TCP"}],
                "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
            },
            "offLedgerClients": [
                {
                    "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                    "ports": [{"port": 443, "protocol": "TCP"}],
                }
            ],
        },
    },
    "podDisruptionBudget": {"minAvailable": 2},
    "image": {"digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "registry"}],
    "priorityClassName": "payments-critical",
    "extraEnv": [{"name": "GRPC_VERBOSITY", "value": "ERROR"}],
    "config": {"logLevel": "DEBUG", "groupCommitBatchMax": 512, "idempotencyMarkerTtlS": 1000000},
}
HPA_CUSTOM_METRIC: dict[str, Any] = {
    "autoscaling": {"decisionRate": {"enabled": True, "averageValue": "250"}, "maxReplicas": 20}
}
EXISTING_SECRET_CUSTOM_KEYS: dict[str, Any] = {
    "secrets": {
        "existingSecret": "authswitch-prod",
        "keys": {
            "postgresDsn": {"secret": "pg-app-credentials", "key": "uri"},
            "redisUrl": "REDIS_URL",
            "panKeyHex": "card-pan",
            "pinKeyHex": "card-pin",
            "cvvKeyHex": "card-cvv",
        },
    }
}
NO_AUTOSCALING: dict[str, Any] = {
    "autoscaling": {"enabled": False},
    "replicaCount": 4,
    "networkPolicy": {"enabled": False},
    "serviceAccount": {"create": False, "name": "payments-sa"},
}
# The deployment that loses no approval in a failover (docs/operations.md), as shipped.
ZERO_LOSS: dict[str, Any] = yaml.safe_load((CHART / "values-zero-loss.yaml").read_text())
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "zero-loss": ZERO_LOSS,
    "everything-on": EVERYTHING_ON,
    "hpa-custom-metric": HPA_CUSTOM_METRIC,
    "existing-secret-custom-keys": EXISTING_SECRET_CUSTOM_KEYS,
    "no-autoscaling": NO_AUTOSCALING,
}


def _camel(field_name: str) -> str:
    head, *rest = field_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


SECRET_FIELDS = [f for f in dataclasses.fields(Settings) if f.repr is False]
PLAIN_FIELDS = [f for f in dataclasses.fields(Settings) if f.repr is not False]


def _all_settings_values() -> dict[str, Any]:
    """Every non-secret setting set explicitly, to its application default."""
    defaults = Settings()
    config: dict[str, Any] = {
        _camel(f.name): _json_value(getattr(defaults, f.name)) for f in PLAIN_FIELDS
    }
    config |= {
        "grpcListen": "0.0.0.0:50051",
        "metricsListen": "0.0.0.0:9464",
        "healthListen": "0.0.0.0:8086",
    }
    config["shutdownGraceS"] = 20
    # migrateOnStart is the server's to decide only without the migration Job.
    return {"config": config, "migration": {"enabled": False}}


def _json_value(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


VALUE_SETS["every-setting"] = _all_settings_values()

# -- rendering --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: dict[str, Any] | None = None) -> Objects:
    manifests = chart.render(
        copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    objects: Objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def only(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def kinds(objects: Objects) -> set[str]:
    return {o["kind"] for o in objects}


def container(objects: Objects, kind: str = "Deployment") -> dict[str, Any]:
    pod = pod_spec(only(objects, kind))
    main: dict[str, Any]
    (main,) = pod["containers"]
    return main


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any]
    if workload["kind"] == "CronJob":
        spec = workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = workload["spec"]["template"]["spec"]
    return spec


def env_of(main: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in main.get("env", [])}


# -- lint and schema --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_is_clean(value_set: str, kube_version: str) -> None:
    report = helm_python.lint(
        CHART,
        copy.deepcopy(VALUE_SETS[value_set]),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}.0",
    )
    # Severity 1 is informational ("icon is recommended"); warnings and errors fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.timeout(60)
def test_values_schema_is_a_valid_draft_07_schema(chart: helm_python.Chart) -> None:
    schema = chart.schema
    assert schema is not None
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(chart.values)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"config": {"groupCommitBatchMaxx": 1}}, "groupCommitBatchMaxx"),
        ({"config": {"groupCommitBatchMax": 0}}, "/config/groupCommitBatchMax"),
        ({"config": {"groupCommitBatchMax": "many"}}, "/config/groupCommitBatchMax"),
        ({"config": {"logFormat": "xml"}}, "/config/logFormat"),
        ({"config": {"grpcListen": "50051"}}, "/config/grpcListen"),
        ({"secrets": {"keys": {"postgresDSN": "dsn"}}}, "postgresDSN"),
        ({"secrets": {"keys": {"redisUrl": {"secret": "s"}}}}, "/secrets/keys/redisUrl"),
        ({"extraEnv": [{"name": "AUTHSWITCH_LOG_LEVEL", "value": "x"}]}, "/extraEnv/0/name"),
        ({"prometheusRule": {"slo": {"latency": {"thresholdSeconds": "0.04"}}}}, "threshold"),
        ({"report": {"enabled": True}}, "/report/client"),
        ({"replicas": 3}, "replicas"),
    ],
)
def test_schema_rejects_bad_values(
    chart: helm_python.Chart, values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(complaint)):
        render(chart, values)


# -- every object valid for Kubernetes --------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_are_valid_kubernetes(
    chart: helm_python.Chart, value_set: str, kube_version: str
) -> None:
    objects = render(chart, VALUE_SETS[value_set])
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            _validate_crd(obj)
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{where} is invalid for Kubernetes {kube_version} at {path}: {exc.message}"
            )
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), names
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert len(obj["metadata"]["name"]) <= 63


_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "labels"],
    "properties": {"name": {"type": "string"}, "labels": _STRING_MAP},
}
# The fields the chart uses, transcribed from the Prometheus Operator's CRDs
# (monitoring.coreos.com_servicemonitors / _prometheusrules), strict like kubernetes-validate.
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _STRING_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                    "properties": {
                                        "record": {"type": "string"},
                                        "alert": {"type": "string"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def _validate_crd(obj: dict[str, Any]) -> None:
    schema = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}
    jsonschema.Draft7Validator(schema[obj["kind"]]).validate(obj)


# -- settings: the chart can only render what the application accepts -----------------------


@pytest.mark.timeout(60)
def test_config_schema_maps_one_to_one_onto_settings(chart: helm_python.Chart) -> None:
    """Each non-secret Settings field is a config key, each secret one a secrets.keys key; the
    schema's type and default are the field's. A new Settings field fails here until its line
    is added to values.schema.json (and, commented, to values.yaml)."""
    schema = chart.schema
    assert schema is not None
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False
    _assert_same_keys(
        set(config["properties"]), {_camel(f.name) for f in PLAIN_FIELDS}, "config.properties"
    )
    secret_keys = schema["properties"]["secrets"]["properties"]["keys"]
    assert secret_keys["additionalProperties"] is False
    _assert_same_keys(
        set(secret_keys["properties"]),
        {_camel(f.name) for f in SECRET_FIELDS},
        "secrets.properties.keys.properties",
    )

    json_type = {bool: "boolean", int: "integer", float: "number", str: "string"}
    defaults = Settings()
    for f in PLAIN_FIELDS:
        prop = config["properties"][_camel(f.name)]
        if "$ref" in prop:
            prop = {**schema["definitions"][prop["$ref"].rsplit("/", 1)[1]], **prop}
        default = getattr(defaults, f.name)
        expected = "string" if isinstance(default, Path) else json_type[type(default)]
        assert prop["type"] == expected, f.name
        assert prop["default"] == _json_value(default), f.name


@pytest.mark.timeout(60)
def test_values_yaml_shows_the_application_defaults() -> None:
    """The commented settings in values.yaml show the application's defaults, and every
    non-secret setting is there, set or commented."""
    text = (CHART / "values.yaml").read_text()
    block = text.split("\nconfig:\n", 1)[1].split("\n\n", 1)[0]
    shown: dict[str, Any] = {}
    for line in block.splitlines():
        match = re.fullmatch(r"\s*#?\s*([a-z][A-Za-z]+): ([^#]+?)\s*(#.*)?", line)
        if match:
            shown |= yaml.safe_load(f"{match[1]}: {match[2]}")
    assert set(shown) == {_camel(f.name) for f in PLAIN_FIELDS}
    defaults = Settings()
    commented = re.findall(r"^\s*# ([a-z][A-Za-z]+): ", block, flags=re.MULTILINE)
    for key in commented:
        field_name = re.sub(r"([A-Z])", r"_\1", key).lower()
        assert shown[key] == _json_value(getattr(defaults, field_name)), key


def _assert_same_keys(chart_keys: set[str], field_keys: set[str], where: str) -> None:
    missing = sorted(field_keys - chart_keys)
    assert not missing, f"Settings fields missing from values.schema.json {where}: {missing}"
    unknown = sorted(chart_keys - field_keys)
    assert not unknown, f"values.schema.json {where} has no Settings field for: {unknown}"


def _rendered_settings(objects: Objects, kind: str = "Deployment") -> dict[str, str]:
    """The AUTHSWITCH_* environment a workload's container starts with: its ConfigMap, then its
    env (secret references stand for a valid value of their setting)."""
    main = container(objects, kind)
    env: dict[str, str] = {}
    for source in main.get("envFrom", []):
        config_map = only(objects, "ConfigMap", source["configMapRef"]["name"])
        env |= config_map["data"]
    for entry in main.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert "secretKeyRef" in entry["valueFrom"], entry
            env[entry["name"]] = "<secret>"
    return {k: v for k, v in env.items() if k.startswith(PREFIX)}


def _stand_in_secrets(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    stand_ins = {
        f"{PREFIX}POSTGRES_DSN": "postgresql://authswitch@postgres:5432/authswitch",
        f"{PREFIX}REDIS_URL": "redis://redis:6379/0",
    }
    result = dict(env)
    for name, value in env.items():
        if value == "<secret>":
            result[name] = stand_ins.get(name, "ab" * 32)
        elif name in {f"{PREFIX}{k}_KEY_FILE" for k in ("PAN", "PIN", "CVV")}:
            # A mounted card key: a file with a key in it.
            key_file = tmp_path / Path(value).name
            key_file.write_text("cd" * 32)
            result[name] = str(key_file)
    return result


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_settings_are_known_and_load(
    chart: helm_python.Chart, value_set: str, tmp_path: Path
) -> None:
    objects = render(chart, VALUE_SETS[value_set])
    field_names = {f.name.upper() for f in dataclasses.fields(Settings)}
    config_map = only(objects, "ConfigMap", FULLNAME)
    for key in config_map["data"]:
        assert key.startswith(PREFIX), key
        assert key.removeprefix(PREFIX) in field_names, f"{key} is not a Settings field"

    workloads = ["Deployment"] + (["CronJob"] if "CronJob" in kinds(objects) else [])
    for kind in workloads:
        env = _rendered_settings(objects, kind)
        for name in env:
            setting = name.removeprefix(PREFIX)
            # *_KEY_FILE names a file holding a card key: the one non-field name the app reads.
            assert setting in field_names or re.fullmatch(r"(PAN|PIN|CVV)_KEY_FILE", setting), name
        settings = Settings.from_env(_stand_in_secrets(env, tmp_path))
        assert settings.grpc_listen.endswith(f":{_port(objects, 'grpc')}")
        assert settings.metrics_listen.endswith(f":{_port(objects, 'metrics')}")
        assert not settings.embedded_postgres
        assert not settings.embedded_redis
        if kind == "Deployment" and VALUE_SETS[value_set].get("migration", {}).get("enabled", True):
            assert settings.migrate_on_start is False
        if value_set == "every-setting":
            # Every value arrives as set: the defaults, but for the three the chart must set.
            expected = dataclasses.replace(
                Settings(),
                grpc_listen="0.0.0.0:50051",
                metrics_listen="0.0.0.0:9464",
                health_listen="0.0.0.0:8086",
                shutdown_grace_s=20.0,
                **{f.name: getattr(settings, f.name) for f in SECRET_FIELDS},
            )
            assert settings == expected


def _port(objects: Objects, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    return int(ports[name])


@pytest.mark.timeout(60)
def test_every_setting_renders_each_key_once(chart: helm_python.Chart) -> None:
    data = only(render(chart, VALUE_SETS["every-setting"]), "ConfigMap", FULLNAME)["data"]
    assert set(data) == {PREFIX + f.name.upper() for f in PLAIN_FIELDS}


@pytest.mark.timeout(60)
def test_only_set_settings_are_rendered(chart: helm_python.Chart) -> None:
    data = only(render(chart), "ConfigMap", FULLNAME)["data"]
    assert data == {
        "AUTHSWITCH_GRPC_LISTEN": "0.0.0.0:50051",
        "AUTHSWITCH_METRICS_LISTEN": "0.0.0.0:9464",
        "AUTHSWITCH_HEALTH_LISTEN": "0.0.0.0:8086",
        "AUTHSWITCH_SHUTDOWN_GRACE_S": "20",
        "AUTHSWITCH_WORKERS": "1",  # one process per pod: pods scale, not processes
    }


@pytest.mark.timeout(60)
def test_numbers_render_as_the_application_reads_them(chart: helm_python.Chart) -> None:
    """Helm holds numbers as floats; 1000000 must not become "1e+06"."""
    values = {
        "config": {"idempotencyMarkerTtlS": 1000000, "ageOffIntervalS": 0.25, "redisPoolMax": 64}
    }
    data = only(render(chart, values), "ConfigMap", FULLNAME)["data"]
    assert data["AUTHSWITCH_IDEMPOTENCY_MARKER_TTL_S"] == "1000000"
    assert data["AUTHSWITCH_AGE_OFF_INTERVAL_S"] == "0.25"
    assert data["AUTHSWITCH_REDIS_POOL_MAX"] == "64"


@pytest.mark.timeout(60)
def test_migrate_on_start_contradicting_the_migration_job_fails(
    chart: helm_python.Chart,
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match="migrateOnStart"):
        render(chart, {"config": {"migrateOnStart": True}})


# -- secrets ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_no_secret_value_is_ever_rendered(chart: helm_python.Chart, value_set: str) -> None:
    objects = render(chart, VALUE_SETS[value_set])
    assert "Secret" not in kinds(objects)
    secret_names = {PREFIX + f.name.upper() for f in SECRET_FIELDS}
    for kind in ("Deployment", "Job", "CronJob"):
        for obj in (o for o in objects if o["kind"] == kind):
            for entry in pod_spec(obj)["containers"][0].get("env", []):
                if entry["name"] in secret_names:
                    assert "value" not in entry, entry
    config_map = only(objects, "ConfigMap", FULLNAME)
    assert not set(config_map["data"]) & secret_names


@pytest.mark.timeout(60)
def test_default_secret_references(chart: helm_python.Chart) -> None:
    env = env_of(container(render(chart)))
    refs = {
        name: entry["valueFrom"]["secretKeyRef"]
        for name, entry in env.items()
        if "valueFrom" in entry
    }
    assert refs == {
        "AUTHSWITCH_POSTGRES_DSN": {"name": FULLNAME, "key": "postgres-dsn"},
        "AUTHSWITCH_REDIS_URL": {"name": FULLNAME, "key": "redis-url"},
        "AUTHSWITCH_PAN_KEY_HEX": {"name": FULLNAME, "key": "pan-key-hex"},
        "AUTHSWITCH_PIN_KEY_HEX": {"name": FULLNAME, "key": "pin-key-hex"},
        "AUTHSWITCH_CVV_KEY_HEX": {"name": FULLNAME, "key": "cvv-key-hex"},
    }


@pytest.mark.timeout(60)
def test_existing_secret_with_custom_keys(chart: helm_python.Chart) -> None:
    objects = render(chart, EXISTING_SECRET_CUSTOM_KEYS)
    env = env_of(container(objects))
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert refs == {
        "AUTHSWITCH_POSTGRES_DSN": {"name": "pg-app-credentials", "key": "uri"},
        "AUTHSWITCH_REDIS_URL": {"name": "authswitch-prod", "key": "REDIS_URL"},
        "AUTHSWITCH_PAN_KEY_HEX": {"name": "authswitch-prod", "key": "card-pan"},
        "AUTHSWITCH_PIN_KEY_HEX": {"name": "authswitch-prod", "key": "card-pin"},
        "AUTHSWITCH_CVV_KEY_HEX": {"name": "authswitch-prod", "key": "card-cvv"},
    }
    # The migration Job needs the database only.
    job_env = env_of(container(objects, "Job"))
    assert job_env["AUTHSWITCH_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"] == {
        "name": "pg-app-credentials",
        "key": "uri",
    }
    assert not {n for n in job_env if n.endswith("_KEY_HEX") or n == "AUTHSWITCH_REDIS_URL"}


@pytest.mark.timeout(60)
def test_card_keys_as_files(chart: helm_python.Chart) -> None:
    objects = render(chart, {"secrets": {"cardKeysAsFiles": True}})
    main = container(objects)
    env = env_of(main)
    assert not {n for n in env if n.endswith("_KEY_HEX")}
    mount = next(m for m in main["volumeMounts"] if m["name"] == "card-keys")
    assert mount["readOnly"] is True
    volume = next(
        v for v in pod_spec(only(objects, "Deployment"))["volumes"] if v["name"] == "card-keys"
    )
    items = {
        item["path"]: (source["secret"]["name"], item["key"])
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert items == {
        "pan_key_hex": (FULLNAME, "pan-key-hex"),
        "pin_key_hex": (FULLNAME, "pin-key-hex"),
        "cvv_key_hex": (FULLNAME, "cvv-key-hex"),
    }
    for name in ("PAN", "PIN", "CVV"):
        path = env[f"AUTHSWITCH_{name}_KEY_FILE"]["value"]
        assert path == f"{mount['mountPath']}/{name.lower()}_key_hex"


# -- the server's pods ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_deployment_runs_the_server_hardened(chart: helm_python.Chart) -> None:
    objects = render(chart)
    deployment = only(objects, "Deployment")
    pod = pod_spec(deployment)
    main = container(objects)
    assert main["args"] == ["serve"]
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "grpc": 50051,
        "metrics": 9464,
        "health": 8086,
    }
    assert main["envFrom"] == [{"configMapRef": {"name": FULLNAME}}]
    assert env_of(main)["AUTHSWITCH_MIGRATE_ON_START"]["value"] == "false"

    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False

    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert main["resources"]["requests"]["cpu"]
    assert main["resources"]["limits"]["memory"]

    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in spread.values():
        assert (
            constraint["labelSelector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )


@pytest.mark.timeout(60)
def test_probes_are_native_grpc_health_checks(chart: helm_python.Chart) -> None:
    main = container(render(chart))
    # On the plaintext health-only port (config.healthListen), so TLS on the gRPC port
    # never breaks them.
    for probe in ("startupProbe", "readinessProbe"):
        assert main[probe]["grpc"] == {"port": 8086, "service": ""}, probe
    # Liveness asks the "liveness" service, SERVING while the process runs (authswitch.app).
    assert main["livenessProbe"]["grpc"] == {"port": 8086, "service": "liveness"}
    assert {"name": "health", "containerPort": 8086, "protocol": "TCP"} in main["ports"]
    # A draining pod (NOT_SERVING) must leave the endpoints quickly but not be restarted.
    drain_s = 5 + 20
    liveness = main["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain_s
    readiness = main["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 10


@pytest.mark.timeout(60)
def test_listen_ports_follow_the_settings(chart: helm_python.Chart) -> None:
    values = {
        "config": {
            "grpcListen": "[::]:7000", "metricsListen": "0.0.0.0:7001", "healthListen": "[::]:7002"
        }
    }  # fmt: skip
    main = container(render(chart, values))
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {
        "grpc": 7000,
        "metrics": 7001,
        "health": 7002,
    }
    assert main["readinessProbe"]["grpc"]["port"] == 7002
    # Without a health port the probes check the gRPC port.
    values["config"]["healthListen"] = ""
    main = container(render(chart, values))
    assert "health" not in {p["name"] for p in main["ports"]}
    assert main["readinessProbe"]["grpc"]["port"] == 7000


TLS_ON: dict[str, Any] = {
    "config": {
        "tlsCertFile": "/var/run/secrets/authswitch-tls/tls.crt",
        "tlsKeyFile": "/var/run/secrets/authswitch-tls/tls.key",
        "tlsClientCaFile": "/var/run/secrets/authswitch-tls/ca.crt",
    },
    "tls": {"secretName": "authswitch-tls"},
}


@pytest.mark.timeout(60)
def test_with_tls_the_secret_is_mounted_and_the_probes_stay_plaintext(
    chart: helm_python.Chart,
) -> None:
    objects = render(chart, TLS_ON)
    pod = pod_spec(only(objects, "Deployment"))
    main = container(objects)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "authswitch-tls"
    (mount,) = [m for m in main["volumeMounts"] if m["name"] == "tls"]
    assert mount == {
        "name": "tls",
        "mountPath": "/var/run/secrets/authswitch-tls",
        "readOnly": True,
    }
    settings = _rendered_settings(objects)
    for key in ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CLIENT_CA_FILE"):
        assert settings[PREFIX + key].startswith(mount["mountPath"] + "/"), key
    # kubelet's gRPC probes speak plaintext: they go to the health-only port, not to TLS.
    health_port = int(settings[PREFIX + "HEALTH_LISTEN"].rsplit(":", 1)[1])
    assert health_port != _port(objects, "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"]["port"] == health_port, probe
    assert _port(objects, "health") == health_port
    for kube_version in KUBE_VERSIONS:
        for obj in objects:
            if obj["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(obj, kube_version, strict=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": TLS_ON["config"]}, "tls.secretName"),
        ({**TLS_ON, "config": {**TLS_ON["config"], "healthListen": ""}}, "healthListen"),
        (
            {**TLS_ON, "config": {**TLS_ON["config"], "tlsKeyFile": "/etc/tls.key"}},
            "must be a file under tls.mountPath",
        ),
    ],
    ids=["no-secret", "no-health-port", "file-elsewhere"],
)
def test_tls_that_could_not_work_fails_the_render(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(chart, values)


@pytest.mark.timeout(60)
def test_termination_grace_exceeds_the_drain(chart: helm_python.Chart) -> None:
    pod = pod_spec(only(render(chart), "Deployment"))
    main = pod["containers"][0]
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 20

    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(chart, {"terminationGracePeriodSeconds": 25})
    render(chart, {"terminationGracePeriodSeconds": 26})


@pytest.mark.timeout(60)
def test_termination_check_knows_the_application_default_grace(
    chart: helm_python.Chart,
) -> None:
    """Without config.shutdownGraceS the server drains for Settings.shutdown_grace_s."""
    default_s = int(Settings().shutdown_grace_s)
    unset = {"config": {"shutdownGraceS": None}, "preStopSleepSeconds": 5}
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(chart, unset | {"terminationGracePeriodSeconds": 5 + default_s})
    objects = render(chart, unset | {"terminationGracePeriodSeconds": 5 + default_s + 1})
    assert "AUTHSWITCH_SHUTDOWN_GRACE_S" not in only(objects, "ConfigMap", FULLNAME)["data"]


@pytest.mark.timeout(60)
def test_config_change_rolls_the_pods(chart: helm_python.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = only(render(chart, values), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"config": {"logLevel": "DEBUG"}})


@pytest.mark.timeout(60)
def test_service_selects_only_the_server(chart: helm_python.Chart) -> None:
    objects = render(chart, EVERYTHING_ON)
    service = only(objects, "Service")
    selector = service["spec"]["selector"]
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "grpc": "grpc",
        "metrics": "metrics",
    }
    server_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= server_labels.items()
    for kind in ("Job", "CronJob"):
        labels = (
            only(objects, kind)["spec"]["template"]["metadata"]["labels"]
            if kind == "Job"
            else only(objects, kind)["spec"]["jobTemplate"]["spec"]["template"]["metadata"][
                "labels"
            ]
        )
        assert not selector.items() <= labels.items(), kind
    assert only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert only(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"] == selector


# -- scaling and disruption -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hpa_on_cpu_by_default(chart: helm_python.Chart) -> None:
    objects = render(chart)
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # The HPA owns the replica count: the Deployment must not reset it on every upgrade.
    assert "replicas" not in only(objects, "Deployment")["spec"]


@pytest.mark.timeout(60)
def test_hpa_custom_decision_rate_metric(chart: helm_python.Chart) -> None:
    hpa = only(render(chart, HPA_CUSTOM_METRIC), "HorizontalPodAutoscaler")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {
            "metric": {"name": "authswitch_decisions_per_second"},
            "target": {"type": "AverageValue", "averageValue": "250"},
        }
    ]
    assert hpa["spec"]["maxReplicas"] == 20


@pytest.mark.timeout(60)
def test_without_autoscaling_the_deployment_sets_replicas(chart: helm_python.Chart) -> None:
    objects = render(chart, NO_AUTOSCALING)
    assert "HorizontalPodAutoscaler" not in kinds(objects)
    assert only(objects, "Deployment")["spec"]["replicas"] == 4
    assert "NetworkPolicy" not in kinds(objects)
    assert pod_spec(only(objects, "Deployment"))["serviceAccountName"] == "payments-sa"
    assert "ServiceAccount" not in kinds(objects)
    assert pod_spec(only(objects, "Job"))["serviceAccountName"] == "payments-sa"


@pytest.mark.timeout(60)
def test_pdb(chart: helm_python.Chart) -> None:
    assert only(render(chart), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    spec = only(
        render(chart, {"podDisruptionBudget": {"minAvailable": "50%"}}), "PodDisruptionBudget"
    )["spec"]
    assert spec["minAvailable"] == "50%"
    assert "maxUnavailable" not in spec


# -- jobs -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(chart: helm_python.Chart) -> None:
    objects = render(chart)
    job = only(objects, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["backoffLimit"] >= 0
    assert job["spec"]["activeDeadlineSeconds"] > 0
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    # A pre-install hook runs before the chart's ServiceAccount and ConfigMap exist.
    assert "serviceAccountName" not in pod
    main = container(objects, "Job")
    assert main["args"] == ["migrate"]
    assert "envFrom" not in main
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    # The network policy the Job needs is a hook too, created before it.
    jobs_policy = only(objects, "NetworkPolicy", f"{FULLNAME}-jobs")
    policy_hook = jobs_policy["metadata"]["annotations"]
    assert policy_hook["helm.sh/hook"] == annotations["helm.sh/hook"]
    assert int(policy_hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])

    assert "Job" not in kinds(render(chart, {"migration": {"enabled": False}}))


@pytest.mark.timeout(60)
def test_the_migration_job_connects_like_the_server_behind_pgbouncer(
    chart: helm_python.Chart,
) -> None:
    """Behind pgbouncer the migration Job must say so too: pgbouncer refuses the session
    settings a direct connection sends at connect time."""
    objects = render(chart, {"config": {"postgresPgbouncer": True}})
    job_env = env_of(container(objects, "Job"))
    assert job_env["AUTHSWITCH_POSTGRES_PGBOUNCER"]["value"] == "true"
    config_map = only(objects, "ConfigMap", FULLNAME)
    assert config_map["data"]["AUTHSWITCH_POSTGRES_PGBOUNCER"] == "true"
    assert "AUTHSWITCH_POSTGRES_PGBOUNCER" not in env_of(container(render(chart), "Job"))


@pytest.mark.timeout(60)
def test_report_cronjob(chart: helm_python.Chart) -> None:
    assert "CronJob" not in kinds(render(chart))
    values = {"report": {"enabled": True, "client": "acme", "prefix": "ACME"}}
    objects = render(chart, values)
    cron = only(objects, "CronJob")
    assert cron["spec"]["schedule"] == "5 1 * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    main = container(objects, "CronJob")
    assert main["args"] == [
        "report", "balances", "--client", "acme", "--prefix", "ACME", "--out", "/reports",
    ]  # fmt: skip
    assert {"name": "reports", "mountPath": "/reports"} in main["volumeMounts"]
    volume = next(v for v in pod_spec(cron)["volumes"] if v["name"] == "reports")
    assert "emptyDir" in volume
    assert "PersistentVolumeClaim" not in kinds(objects)


@pytest.mark.timeout(60)
def test_report_cronjob_on_a_persistent_volume(chart: helm_python.Chart) -> None:
    objects = render(chart, EVERYTHING_ON)
    claim = only(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volume = next(
        v for v in pod_spec(only(objects, "CronJob"))["volumes"] if v["name"] == "reports"
    )
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]

    existing = {
        "report": {
            "enabled": True,
            "client": "acme",
            "prefix": "ACME",
            "volume": {"type": "persistentVolumeClaim", "existingClaim": "reports-nfs"},
        }
    }
    objects = render(chart, existing)
    assert "PersistentVolumeClaim" not in kinds(objects)
    volume = next(
        v for v in pod_spec(only(objects, "CronJob"))["volumes"] if v["name"] == "reports"
    )
    assert volume["persistentVolumeClaim"]["claimName"] == "reports-nfs"


# -- network ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_network_policy(chart: helm_python.Chart) -> None:
    objects = render(chart, EVERYTHING_ON)
    policy = only(objects, "NetworkPolicy", FULLNAME)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    grpc_rule, metrics_rule = spec["ingress"]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc_rule["from"] == EVERYTHING_ON["networkPolicy"]["ingress"]["grpcFrom"]
    assert metrics_rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = [{p["port"] for p in rule["ports"]} for rule in spec["egress"]]
    assert egress_ports == [{5432}, {6379}, {53}, {443}]
    assert spec["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert "to" not in spec["egress"][1]  # any address, on the Redis port only
    assert spec["egress"][3]["to"] == [{"ipBlock": {"cidr": "203.0.113.0/24"}}]


# -- monitoring -------------------------------------------------------------------------------


def _known_series() -> set[str]:
    """The series authswitch exposes, with the suffixes Prometheus gives each type."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
    }
    names: set[str] = set()
    for attribute in metrics.__all__:
        series = getattr(metrics, attribute)
        if not hasattr(series, "describe"):  # the hot-path helpers beside the series
            continue
        for family in series.describe():
            names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


_SERIES = re.compile(r"\b((?:authswitch|grpc_server)_[a-z0-9_]+)\b")


def _referenced_series(expr: str) -> set[str]:
    return set(_SERIES.findall(expr))


def _rule_groups(objects: Objects) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = only(objects, "PrometheusRule")["spec"]["groups"]
    return groups


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run must install it (Debian package prometheus)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def _run_promtool(*args: str) -> str:
    result = subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.timeout(60)
def test_zero_loss_values_reach_postgres_and_the_sentinels(chart: helm_python.Chart) -> None:
    objects = render(chart, ZERO_LOSS)
    policy = only(objects, "NetworkPolicy", FULLNAME)
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {5432, 6379, 26379} <= ports
    config = only(objects, "ConfigMap", FULLNAME)["data"]
    assert config[f"{PREFIX}POSTGRES_STATEMENT_TIMEOUT_MS"] == "5000"
    env = env_of(container(objects))
    assert env[f"{PREFIX}POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]["key"] == "postgres-dsn"
    assert env[f"{PREFIX}REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"


def test_monitoring_objects_are_switchable(chart: helm_python.Chart) -> None:
    defaults = kinds(render(chart))
    assert not defaults & {"ServiceMonitor", "PrometheusRule"}
    assert f"{FULLNAME}-dashboard" not in {
        o["metadata"]["name"] for o in render(chart) if o["kind"] == "ConfigMap"
    }
    objects = render(chart, EVERYTHING_ON)
    monitor = only(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert only(objects, "PrometheusRule")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )


@pytest.mark.timeout(60)
def test_readme_turns_the_monitoring_objects_on(chart: helm_python.Chart) -> None:
    """The README says the monitoring objects are off by default and shows the values that
    turn them on: those values render all three."""
    readme = (ROOT / "README.md").read_text()
    assert "monitoring objects are off by default" in readme
    block = readme.split("# values-monitoring.yaml", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    objects = render(chart, yaml.safe_load(block))
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds(objects)
    assert f"{FULLNAME}-dashboard" in {
        o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"
    }


@pytest.mark.timeout(60)
def test_rules_read_only_series_authswitch_exposes(chart: helm_python.Chart) -> None:
    known = _known_series()
    for group in _rule_groups(render(chart, EVERYTHING_ON)):
        for rule in group["rules"]:
            unknown = _referenced_series(rule["expr"]) - known
            assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


@pytest.mark.timeout(60)
def test_latency_thresholds_are_bucket_bounds() -> None:
    """The latency SLO reads le="<threshold>": it must be a bound as the client prints it."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    latency = schema["properties"]["prometheusRule"]["properties"]["slo"]["properties"]["latency"]
    # The parent's bounds (prometheus_client keeps them there): no child series is created.
    upper_bounds = metrics.DECISION_SECONDS._upper_bounds
    # Without +Inf. (prometheus_client ships py.typed but leaves floatToGoString unannotated.)
    bounds = [floatToGoString(b) for b in upper_bounds[:-1]]  # type: ignore[no-untyped-call]
    assert latency["properties"]["thresholdSeconds"]["enum"] == bounds


@pytest.mark.timeout(60)
def test_every_alert_has_a_runbook_section(chart: helm_python.Chart) -> None:
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", OPERATIONS_MD.read_text(), re.M)}
    alerts = [
        r for g in _rule_groups(render(chart, EVERYTHING_ON)) for r in g["rules"] if "alert" in r
    ]
    assert {a["alert"] for a in alerts} >= {
        "AuthswitchLatencyBudgetBurn",
        "Authswitch96BudgetBurn",
        "AuthswitchStandInBudgetBurn",
        "AuthswitchOutboxLagging",
        "AuthswitchOutboxDeadLetters",
        "AuthswitchReconciliationDrift",
        "AuthswitchReconciliationStale",
    }
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("docs/operations.md"), url
        assert anchor in anchors, f"{alert['alert']}: no section #{anchor} in docs/operations.md"
        assert alert["labels"]["severity"] in {"critical", "warning"}


def _github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("value_set", ["everything-on", "custom-slo"])
def test_promtool_checks_the_rules(
    chart: helm_python.Chart, value_set: str, tmp_path: Path
) -> None:
    values = EVERYTHING_ON if value_set == "everything-on" else CUSTOM_SLO
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rule_groups(render(chart, values))}))
    output = _run_promtool("check", "rules", str(rules))
    assert "SUCCESS" in output


CUSTOM_SLO: dict[str, Any] = {
    "prometheusRule": {
        "enabled": True,
        "burnRates": {
            "fast": {
                "factor": 10,
                "longWindow": "2h",
                "shortWindow": "10m",
                "for": "1m",
                "severity": "page",
            },
            "slow": {
                "factor": 2,
                "longWindow": "1d",
                "shortWindow": "2h",
                "for": "1h",
                "severity": "ticket",
            },
        },
        "slo": {
            "latency": {"thresholdSeconds": "0.1", "target": 0.99},
            "responseCode96": {"target": 0.999},
            "standIns": {"target": 0.95},
        },
    }
}


@pytest.mark.timeout(120)
def test_promtool_unit_tests_the_alerts(chart: helm_python.Chart, tmp_path: Path) -> None:
    """Series in, alerts out: each alert fires on the failure it is for, and not otherwise."""
    values = copy.deepcopy(EVERYTHING_ON)
    values["prometheusRule"]["reconciliation"] = {"maxAgeSeconds": 600}
    groups = _rule_groups(render(chart, values))
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    alerts = {
        (r["alert"], r["labels"].get("burn")): r for g in groups for r in g["rules"] if "alert" in r
    }
    target = {"namespace": NAMESPACE, "job": FULLNAME, "pod": "p1"}

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        selector = ",".join(f'{k}="{v}"' for k, v in (target | labels).items())
        return {"series": f"{name}{{{selector}}}", "values": values}

    def expected(alert: str, burn: str | None = None, **labels: str) -> dict[str, Any]:
        rule = alerts[(alert, burn)]
        exp_labels = {"namespace": NAMESPACE, "job": FULLNAME} | labels | rule["labels"]
        annotations = {
            key: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: exp_labels[m[1]], text)
            for key, text in rule["annotations"].items()
        }
        return {"exp_labels": exp_labels, "exp_annotations": annotations}

    decided = {"mode": "on_ledger", "transaction_type": "purchase"}
    off_ledger = {"mode": "off_ledger", "transaction_type": "purchase"}
    up = series("up", "1x90")
    tests = [
        {  # 2% of decisions answered 96: both burn rates of a 99.95% SLO.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_decisions_total", "0+980x90", response_code="00", **decided),
                series("authswitch_decisions_total", "0+20x90", response_code="96", **decided),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "Authswitch96BudgetBurn",
                    "exp_alerts": [
                        expected("Authswitch96BudgetBurn", "fast"),
                        expected("Authswitch96BudgetBurn", "slow"),
                    ],
                },
                {"eval_time": "30m", "alertname": "AuthswitchLatencyBudgetBurn", "exp_alerts": []},
                {"eval_time": "30m", "alertname": "AuthswitchDown", "exp_alerts": []},
            ],
        },
        {  # 5% answered 96 for 20 minutes, then none: the short window ends the fast alert,
            # while the slow one (30m window) still fires.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_decisions_total", "0+1000x90", response_code="00", **decided),
                series(
                    "authswitch_decisions_total", "0+50x20 1000x70", response_code="96", **decided
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "40m",
                    "alertname": "Authswitch96BudgetBurn",
                    "exp_alerts": [expected("Authswitch96BudgetBurn", "slow")],
                }
            ],
        },
        {  # 0.01% answered 96: within budget, no alert.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_decisions_total", "0+9999x90", response_code="00", **decided),
                series("authswitch_decisions_total", "0+1x90", response_code="96", **decided),
            ],
            "alert_rule_test": [
                {"eval_time": "60m", "alertname": "Authswitch96BudgetBurn", "exp_alerts": []}
            ],
        },
        {  # 10% of decisions slower than 50 ms.
            "interval": "1m",
            "input_series": [
                up,
                series(
                    "authswitch_decision_seconds_bucket", "0+900x90", le="0.05", mode="on_ledger"
                ),
                series(
                    "authswitch_decision_seconds_bucket", "0+1000x90", le="+Inf", mode="on_ledger"
                ),
                series("authswitch_decision_seconds_count", "0+1000x90", mode="on_ledger"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "AuthswitchLatencyBudgetBurn",
                    "exp_alerts": [
                        expected("AuthswitchLatencyBudgetBurn", "fast"),
                        expected("AuthswitchLatencyBudgetBurn", "slow"),
                    ],
                }
            ],
        },
        {  # A burn that started at 11m: at 18m the fast alert fires, the slow one not yet.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_decisions_total", "0+100x90", response_code="00", **off_ledger),
                series(
                    "authswitch_stand_ins_total", "0x10 0+60x80", reason="timeout", policy="approve"
                ),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "18m",
                    "alertname": "AuthswitchStandInBudgetBurn",
                    "exp_alerts": [expected("AuthswitchStandInBudgetBurn", "fast")],
                }
            ],
        },
        {  # Outbox: the oldest notification ages a minute a minute; dead letters appear.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_outbox_oldest_age_seconds", "0+60x40", sink="webhook"),
                series("authswitch_outbox_oldest_age_seconds", "30x40", sink="ledger"),
                series("authswitch_outbox_dead_letters", "0 0 0 3x40", sink="webhook"),
                series("authswitch_outbox_dead_letters", "0x40", sink="ledger"),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "AuthswitchOutboxLagging", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "AuthswitchOutboxLagging",
                    "exp_alerts": [expected("AuthswitchOutboxLagging", sink="webhook")],
                },
                {
                    "eval_time": "10m",
                    "alertname": "AuthswitchOutboxDeadLetters",
                    "exp_alerts": [expected("AuthswitchOutboxDeadLetters", sink="webhook")],
                },
            ],
        },
        {  # Reconciliation: breaks and drift in one check (one alert); a stale last run.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_reconciliation_breaks", "0x5 2x30", check="balances"),
                series("authswitch_reconciliation_drift_minor", "0x5 150x30", check="balances"),
                series("authswitch_reconciliation_breaks", "0x35", check="holds"),
                series("authswitch_reconciliation_last_run_timestamp_seconds", "0x35"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "AuthswitchReconciliationDrift",
                    "exp_alerts": [expected("AuthswitchReconciliationDrift", check="balances")],
                },
                {"eval_time": "5m", "alertname": "AuthswitchReconciliationStale", "exp_alerts": []},
                {
                    "eval_time": "20m",
                    "alertname": "AuthswitchReconciliationStale",
                    "exp_alerts": [expected("AuthswitchReconciliationStale")],
                },
            ],
        },
        {  # A run every minute (the gauge holds its time): never stale.
            "interval": "1m",
            "input_series": [
                up,
                series("authswitch_reconciliation_last_run_timestamp_seconds", "0+60x40"),
            ],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": "AuthswitchReconciliationStale", "exp_alerts": []}
            ],
        },
        {  # Every target down.
            "interval": "1m",
            "input_series": [series("up", "0x20")],
            "alert_rule_test": [
                {
                    "eval_time": "10m",
                    "alertname": "AuthswitchDown",
                    "exp_alerts": [expected("AuthswitchDown")],
                }
            ],
        },
    ]
    unit = tmp_path / "test.yaml"
    unit.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests})
    )
    output = _run_promtool("test", "rules", str(unit))
    assert "SUCCESS" in output


# -- the Grafana dashboard --------------------------------------------------------------------


def _dashboard(objects: Objects) -> dict[str, Any]:
    config_map = only(objects, "ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard: dict[str, Any] = json.loads(config_map["data"]["authswitch.json"])
    return dashboard


def _dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


@pytest.mark.timeout(60)
def test_dashboard_shows_what_operators_need(chart: helm_python.Chart) -> None:
    dashboard = _dashboard(render(chart, EVERYTHING_ON))
    assert dashboard["uid"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {
        "datasource",
        "namespace",
        "job",
    }
    shown = set().union(*(_referenced_series(t["expr"]) for _, t in _dashboard_targets(dashboard)))
    assert shown >= {
        "authswitch_decisions_total",
        "authswitch_decision_seconds_bucket",
        "authswitch_stand_ins_total",
        "authswitch_client_seconds_bucket",
        "authswitch_outbox_depth",
        "authswitch_outbox_oldest_age_seconds",
        "authswitch_group_commit_batch_size_bucket",
        "authswitch_group_commit_wait_seconds_bucket",
        "authswitch_store_errors_total",
        "authswitch_cache_loads_total",
        "authswitch_reconciliation_breaks",
        "authswitch_event_loop_lag_seconds_bucket",
        "authswitch_authorizations_shed_total",
        "authswitch_grpc_acceptors_surging",
    }
    assert not shown - _known_series()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for title, target in _dashboard_targets(dashboard):
        assert 'namespace="$namespace",job="$job"' in target["expr"], title


@pytest.mark.timeout(120)
def test_promtool_parses_the_dashboard_queries(chart: helm_python.Chart, tmp_path: Path) -> None:
    """Grafana only reports a broken query when someone looks: parse them all now."""
    dashboard = _dashboard(render(chart, EVERYTHING_ON))
    rules = []
    for number, (_, target) in enumerate(_dashboard_targets(dashboard)):
        expr = target["expr"].replace("$__rate_interval", "5m")
        expr = expr.replace("$namespace", NAMESPACE).replace("$job", FULLNAME)
        rules.append({"record": f"dashboard:query_{number}:check", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert "SUCCESS" in _run_promtool("check", "rules", str(path))
