"""The control plane is real: CRD validation/defaulting/pruning, the status
subresource, printer columns, watches, RBAC, helm and (when running)
kube-controller-manager's controllers, all against etcd + kube-apiserver."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from testbed.controlplane import CommandError, ControlPlane

TESTDATA = Path(__file__).resolve().parent / "testdata"
GROUP, VERSION, PLURAL = "test.orchestrator.dev", "v1", "widgets"
K8S_VERSION = "v1.34.4"  # what tools/controlplane/go.mod pins

T = TypeVar("T")


def eventually(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.1) -> T:
    """Retry `fn` until it returns without raising (e.g. RBAC caches, controllers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception:
            if time.monotonic() >= deadline:
                raise
            time.sleep(interval)


def widget(name: str, **spec: object) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


@pytest.fixture
def namespace(control_plane: ControlPlane):
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    # Namespace deletion needs KCM's namespace controller to finish; without
    # it the namespace just stays Terminating, harmless in a throwaway plane.
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane) -> str:
    control_plane.kubectl("apply", "-f", TESTDATA / "widget-crd.yaml")
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.test.orchestrator.dev", "--timeout=60s"
    )
    return "widgets.test.orchestrator.dev"


def get_widget(cp: ControlPlane, ns: str, name: str) -> dict:
    return json.loads(cp.kubectl("get", "widget", name, "-n", ns, "-o", "json").stdout)


# -- the plane itself --------------------------------------------------------


def test_versions_are_stamped(control_plane: ControlPlane) -> None:
    out = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == K8S_VERSION
    assert out["serverVersion"]["gitVersion"] == K8S_VERSION
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert "v3." in control_plane.helm("version", "--short").stdout


def test_readyz_over_verified_tls(control_plane: ControlPlane) -> None:
    # kubectl verifies the server certificate against the kubeconfig's CA.
    out = control_plane.kubectl("get", "--raw", "/readyz?verbose").stdout
    assert "readyz check passed" in out
    assert "[+]etcd ok" in out


# -- CRDs --------------------------------------------------------------------


def test_crd_is_established_and_valid_object_is_defaulted(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=widget("w1", size=3))
    obj = get_widget(control_plane, namespace, "w1")
    assert obj["spec"] == {"size": 3, "color": "blue"}  # color defaulted by the schema
    assert obj["metadata"]["generation"] == 1


def test_schema_violation_is_refused_with_apiserver_message(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    res = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("too-big", size=42), check=False
    )
    assert res.returncode != 0
    assert (
        'The Widget "too-big" is invalid: spec.size: Invalid value: 42: '
        "spec.size in body should be less than or equal to 10"
    ) in res.stderr

    res = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("bad-color", size=1, color="pink"), check=False
    )
    assert res.returncode != 0
    assert 'spec.color: Unsupported value: "pink"' in res.stderr

    res = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("no-size", color="red"), check=False
    )
    assert res.returncode != 0
    assert "spec.size: Required value" in res.stderr
    # Nothing was stored.
    assert control_plane.kubectl("get", "widgets", "-n", namespace, "-o", "name").stdout == ""


def test_unknown_fields_strict_rejected_or_pruned(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    doc = widget("pruned", size=2, bogus="x")
    # kubectl asks for strict server-side field validation by default ...
    res = control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=False)
    assert res.returncode != 0
    assert 'unknown field "spec.bogus"' in res.stderr
    # ... without it the apiserver accepts the object and prunes the field.
    control_plane.kubectl("apply", "--validate=false", "-n", namespace, "-f", "-", input=doc)
    obj = get_widget(control_plane, namespace, "pruned")
    assert "bogus" not in obj["spec"]
    assert obj["spec"] == {"size": 2, "color": "blue"}


def test_printer_columns(control_plane: ControlPlane, widget_crd: str, namespace: str) -> None:
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=widget("printed", size=7, color="green"))
    control_plane.kubectl(
        "patch", "widget", "printed", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", '{"status": {"phase": "Ready"}}',
    )
    lines = control_plane.kubectl("get", "widgets", "-n", namespace).stdout.splitlines()
    assert lines[0].split() == ["NAME", "COLOR", "SIZE", "PHASE", "AGE"]
    assert lines[1].split()[:4] == ["printed", "green", "7", "Ready"]


def test_status_subresource_and_generation(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=widget("gen", size=1))
    assert get_widget(cp, namespace, "gen")["metadata"]["generation"] == 1

    # Status through /status: stored, generation unchanged.
    cp.kubectl(
        "patch", "widget", "gen", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Ready", "observedGeneration": 1}}',
    )
    obj = get_widget(cp, namespace, "gen")
    assert obj["status"] == {"phase": "Ready", "observedGeneration": 1}
    assert obj["metadata"]["generation"] == 1

    # Status through the main resource is ignored when /status is enabled.
    cp.kubectl("patch", "widget", "gen", "-n", namespace, "--type=merge", "-p", '{"status": {"phase": "Hacked"}}')
    obj = get_widget(cp, namespace, "gen")
    assert obj["status"]["phase"] == "Ready"
    assert obj["metadata"]["generation"] == 1

    # A spec change bumps generation (and doesn't touch status).
    cp.kubectl("patch", "widget", "gen", "-n", namespace, "--type=merge", "-p", '{"spec": {"size": 5}}')
    obj = get_widget(cp, namespace, "gen")
    assert obj["spec"]["size"] == 5
    assert obj["metadata"]["generation"] == 2
    assert obj["status"]["phase"] == "Ready"


# -- watch -------------------------------------------------------------------


def test_python_client_watch_sees_added_modified_deleted(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    cp = control_plane
    api = client.CustomObjectsApi(cp.api_client())
    rv = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["metadata"]["resourceVersion"]

    events: list[tuple[str, int]] = []
    ready = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        w = watch.Watch()
        try:
            ready.set()
            for ev in w.stream(
                api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                resource_version=rv, timeout_seconds=30,
            ):
                obj = ev["object"]
                if obj["metadata"]["name"] != "watched":
                    continue
                events.append((ev["type"], obj["spec"]["size"]))
                if ev["type"] == "DELETED":
                    w.stop()
        except BaseException as e:  # surfaced in the main thread
            errors.append(e)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    ready.wait(5)
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=widget("watched", size=1))
    cp.kubectl("patch", "widget", "watched", "-n", namespace, "--type=merge", "-p", '{"spec": {"size": 2}}')
    cp.kubectl("delete", "widget", "watched", "-n", namespace)
    t.join(35)
    assert not errors, errors
    assert events == [("ADDED", 1), ("MODIFIED", 2), ("DELETED", 2)]


# -- RBAC --------------------------------------------------------------------


def test_rbac_service_account_get_one_configmap_only(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    cp.kubectl("create", "configmap", "allowed", "-n", namespace, "--from-literal=k=v")
    cp.kubectl("create", "configmap", "other", "-n", namespace, "--from-literal=k=v")
    cp.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    cp.kubectl(
        "create", "role", "read-allowed", "-n", namespace,
        "--verb=get", "--resource=configmaps", "--resource-name=allowed",
    )
    cp.kubectl(
        "create", "rolebinding", "reader", "-n", namespace,
        "--role=read-allowed", f"--serviceaccount={namespace}:reader",
    )
    kc = cp.service_account_kubeconfig(namespace, "reader")
    v1 = client.CoreV1Api(cp.api_client(kc))

    # Allowed: get of the one named ConfigMap (poll: the authorizer's RBAC
    # informer sees the new binding a moment after it is created).
    cm = eventually(lambda: v1.read_namespaced_config_map("allowed", namespace))
    assert cm.data == {"k": "v"}

    # Denied: list, and get of any other ConfigMap -- 403 from the apiserver.
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map(namespace)
    assert exc.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in exc.value.body
    assert 'cannot list resource \\"configmaps\\"' in exc.value.body or \
        'cannot list resource "configmaps"' in exc.value.body

    with pytest.raises(ApiException) as exc:
        v1.read_namespaced_config_map("other", namespace)
    assert exc.value.status == 403

    # The same through kubectl, with the apiserver's message.
    res = cp.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kc, check=False)
    assert res.returncode != 0
    assert (
        f'configmaps is forbidden: User "system:serviceaccount:{namespace}:reader" '
        f'cannot list resource "configmaps" in API group "" in the namespace "{namespace}"'
    ) in res.stderr
    assert cp.kubectl("get", "configmap", "allowed", "-n", namespace, "-o", "name", kubeconfig=kc).stdout.strip() == "configmap/allowed"


def test_rbac_static_user_has_nothing_until_bound(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    kc = cp.user_kubeconfig("alice")
    res = cp.kubectl("get", "pods", "-n", namespace, kubeconfig=kc, check=False)
    assert 'User "alice" cannot list resource "pods"' in res.stderr
    assert cp.kubectl("auth", "can-i", "list", "pods", "-n", namespace, kubeconfig=kc, check=False).stdout.strip() == "no"
    cp.kubectl("create", "rolebinding", "alice-view", "-n", namespace, "--clusterrole=view", "--user=alice")
    eventually(lambda: cp.kubectl("get", "pods", "-n", namespace, kubeconfig=kc))
    assert cp.kubectl("auth", "can-i", "list", "pods", "-n", namespace, kubeconfig=kc).stdout.strip() == "yes"
    # view does not include writes.
    assert cp.kubectl("auth", "can-i", "create", "configmaps", "-n", namespace, kubeconfig=kc, check=False).stdout.strip() == "no"


# -- helm --------------------------------------------------------------------


def test_helm_install_and_uninstall(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    chart = TESTDATA / "charts" / "hello"
    out = cp.helm("install", "hi", chart, "-n", namespace, "--set", "greeting=bonjour").stdout
    assert "STATUS: deployed" in out

    cm = json.loads(cp.kubectl("get", "configmap", "hi-greeting", "-n", namespace, "-o", "json").stdout)
    assert cm["data"]["greeting"] == "bonjour"
    # helm saw the stamped server version (the chart's kubeVersion needs >= 1.30).
    assert cm["data"]["kubeVersion"] == K8S_VERSION
    cp.kubectl("get", "serviceaccount", "hi", "-n", namespace)
    releases = json.loads(cp.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("hi", "deployed")]
    # helm keeps the release in a Secret.
    assert "sh.helm.release.v1.hi.v1" in cp.kubectl("get", "secrets", "-n", namespace, "-o", "name").stdout

    assert 'release "hi" uninstalled' in cp.helm("uninstall", "hi", "-n", namespace).stdout
    res = cp.kubectl("get", "configmap", "hi-greeting", "-n", namespace, check=False)
    assert 'configmaps "hi-greeting" not found' in res.stderr
    res = cp.kubectl("get", "serviceaccount", "hi", "-n", namespace, check=False)
    assert 'serviceaccounts "hi" not found' in res.stderr
    assert json.loads(cp.helm("list", "-n", namespace, "-o", "json").stdout) == []


# -- kube-controller-manager -------------------------------------------------


@pytest.fixture
def kcm(control_plane: ControlPlane) -> ControlPlane:
    if not control_plane.with_kcm:
        pytest.skip("kube-controller-manager not running (WITH_KCM=0 or not built)")
    return control_plane


def test_kcm_garbage_collects_owned_objects(kcm: ControlPlane, namespace: str) -> None:
    cp = kcm
    cp.kubectl("create", "configmap", "parent", "-n", namespace)
    uid = cp.kubectl("get", "configmap", "parent", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid}],
        },
    }
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(child))
    cp.kubectl("delete", "configmap", "parent", "-n", namespace)

    def child_gone() -> None:
        res = cp.kubectl("get", "configmap", "child", "-n", namespace, check=False)
        assert 'configmaps "child" not found' in res.stderr

    eventually(child_gone, timeout=60)


def test_kcm_deployment_creates_replicaset(kcm: ControlPlane, namespace: str) -> None:
    cp = kcm
    cp.kubectl("create", "deployment", "web", "-n", namespace, "--image=example.invalid/web:1", "--replicas=2")

    def replicaset_with_pods() -> dict:
        rs = json.loads(cp.kubectl("get", "replicasets", "-n", namespace, "-o", "json").stdout)["items"]
        assert len(rs) == 1
        # The ReplicaSet controller creates Pods too (they stay Pending: no kubelet).
        pods = json.loads(cp.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
        assert len(pods) == 2
        return rs[0]

    rs = eventually(replicaset_with_pods, timeout=60)
    owner = rs["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("Deployment", "web")
    # The namespace's default ServiceAccount was created by KCM too.
    cp.kubectl("get", "serviceaccount", "default", "-n", namespace)
