"""JSON schemas for kubeconform, made offline from what the Go module proxy serves.

kubeconform validates each object against ``<dir>/<group>/<version>/<kind>.json``
(``schema_location()``). This module writes those files, strict (``additionalProperties:
false`` on every object that lists its properties, as kubeconform's own ``-strict``
schemas), from
- Kubernetes' OpenAPI (``api/openapi-spec/swagger.json`` of the ``k8s.io/kubernetes`` module
  at the version ``tools/go.mod`` pins, the same as the test control plane's);
- the chart's own CRD (``helm/pipeq/crds/workerpools.yaml``);
- the Prometheus Operator's CRDs (ServiceMonitor, PodMonitor, PrometheusRule) from its module
  ``github.com/prometheus-operator/prometheus-operator`` at PROMETHEUS_OPERATOR.

Kubernetes' schemas are cached under ``$PIPEQ_CACHE`` by version and by this file's hash;
the CRDs' are written each time (a few ms), so a changed CRD is what is checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
CRD = ROOT / "helm" / "pipeq" / "crds" / "workerpools.yaml"
PROMETHEUS_OPERATOR = "v0.85.0"
PROMETHEUS_CRDS = ("servicemonitors", "podmonitors", "prometheusrules")
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"


def _go() -> str:
    return shutil.which("go") or "/usr/local/go/bin/go"


def module_dir(path: str, version: str | None = None, cwd: Path = TOOLS) -> Path:
    """The extracted module ``path`` (at ``version``, else the one ``cwd``'s go.mod requires),
    downloaded from the Go module proxy once."""
    target = f"{path}@{version}" if version else path
    out = subprocess.run([_go(), "mod", "download", "-json", target], cwd=cwd, capture_output=True, text=True,
                         timeout=900, check=True).stdout
    return Path(json.loads(out)["Dir"])


def kube_version() -> str:
    out = subprocess.run([_go(), "mod", "edit", "-json"], cwd=TOOLS, capture_output=True, text=True, check=True).stdout
    return next(r["Version"] for r in json.loads(out)["Require"] if r["Path"] == "k8s.io/kubernetes")


def _cache_root() -> Path:
    return Path(os.environ.get("PIPEQ_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipeq")


def strict(node, nullable: bool = False):
    """Deny unknown fields wherever an object lists its properties (unless it preserves
    unknown fields, as a CRD may say); optional fields may be null, as the API server takes."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k not in ("properties",)}
    if "properties" in node:
        required = set(node.get("required") or [])
        out["properties"] = {k: _nullable(strict(v)) if k not in required else strict(v)
                             for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        out = {k: v for k, v in out.items() if k not in ("type", "format")}
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    return out


def _nullable(node: dict) -> dict:
    if isinstance(node.get("type"), str):
        return {**node, "type": [node["type"], "null"]}
    return node


def _path(apiversion: str, kind: str) -> str:
    """kubeconform's {{.Group}}/{{.ResourceAPIVersion}}/{{.ResourceKind}}: "v1/v1/pod" for the core group."""
    group, _, version = apiversion.rpartition("/")
    return f"{group or version}/{version}/{kind.lower()}.json"


def schema_location(where: Path) -> str:
    return str(where) + "/{{.Group}}/{{.ResourceAPIVersion}}/{{.ResourceKind}}.json"


def _refs(node, found: set[str], defs: dict) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            name = ref.rsplit("/", 1)[1]
            if name not in found:
                found.add(name)
                _refs(defs[name], found, defs)
        for v in node.values():
            _refs(v, found, defs)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found, defs)


def write_kubernetes(out: Path, swagger: dict) -> int:
    """One file per kind of Kubernetes' OpenAPI, each with the definitions it reaches."""
    defs = swagger["definitions"]
    defs = {**defs}
    defs[QUANTITY] = {"oneOf": [{"type": "string"}, {"type": "number"}], "description": defs[QUANTITY].get("description", "")}
    defs = {k: strict(v) for k, v in defs.items()}
    n = 0
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind") or []:
            apiversion = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            reached: set[str] = set()
            _refs(d, reached, defs)
            doc = {**copy.deepcopy(d), "definitions": {k: defs[k] for k in sorted(reached)}}
            # apiVersion and kind must say this kind (kubeconform picks the file by them)
            doc["properties"]["apiVersion"] = {"type": "string", "enum": [apiversion]}
            doc["properties"]["kind"] = {"type": "string", "enum": [gvk["kind"]]}
            path = out / _path(apiversion, gvk["kind"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(doc))
            n += 1
    return n


def write_crd(out: Path, crd: dict) -> list[str]:
    """One file per served version of a CustomResourceDefinition."""
    written = []
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    for v in crd["spec"]["versions"]:
        if not v.get("served", True):
            continue
        schema = strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
        props = schema.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{v['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props["metadata"] = {"type": "object"}
        schema["additionalProperties"] = False
        path = out / _path(f"{group}/{v['name']}", kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema))
        written.append(str(path))
    return written


def kubernetes_schemas() -> Path:
    """The cached directory of Kubernetes' schemas (made on first use)."""
    version = kube_version()
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    where = _cache_root() / f"kube-schemas-{version.lstrip('v')}-{digest}"
    if (where / ".complete").exists():
        return where
    swagger = json.loads((module_dir("k8s.io/kubernetes") / "api" / "openapi-spec" / "swagger.json").read_text())
    tmp = where.with_name(where.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_kubernetes(tmp, swagger)
    shutil.rmtree(where, ignore_errors=True)
    tmp.rename(where)
    (where / ".complete").touch()
    return where


def crd_schemas(out: Path) -> Path:
    """The chart's CRD and the Prometheus Operator's, written into ``out``."""
    write_crd(out, yaml.safe_load(CRD.read_text()))
    prom = module_dir("github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR)
    for name in PROMETHEUS_CRDS:
        write_crd(out, yaml.safe_load((prom / "example" / "prometheus-operator-crd" / f"monitoring.coreos.com_{name}.yaml").read_text()))
    return out
