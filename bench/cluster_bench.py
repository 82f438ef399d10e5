"""Shared helpers for the cluster benchmarks (bench_propagation.py, bench_scale.py).

They run the product on the real test control plane (tests/cluster): etcd +
kube-apiserver, the operator and N proxy replicas as local processes, exactly
as the cluster tests and `make dev` do. Everything here observes the product
from outside (watches, HTTP, /proc): no product code is changed or imported
into the measured processes.

Run as a script, `--kopf-diffbase` measures what kopf's per-event diff-base
copy costs for the operator's biggest ConfigMaps; `--backend PORT` is a tiny
backend for the benchmarks:

    python bench/cluster_bench.py --backend PORT

It answers every path with 200 and counts the requests whose path ends with
`/health` (health probes) in 100 ms buckets, so a benchmark can measure the
probe rate and its burstiness at the receiving end:
`GET /_bench/probes` -> {"buckets": {"<unix time // 0.1>": n, ...}, "total": n}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testbed/, the shared harness (kept out of the product's wheel)

GROUP, VERSION, PLURAL = "orchestrator.dev", "v1alpha1", "endpoints"
NAMESPACE = "orchestrator-system"
REGISTRY = "orchestrator-registry"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- statistics -------------------------------------------------------------------

def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "max": max(ms) if ms else float("nan"), "min": min(ms) if ms else float("nan")}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (what docs/performance-cluster.md shows)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# -- processes ------------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class CpuMeter:
    """CPU use of some processes between start() and stop(), in % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = 0.0
        self.c0: dict[str, float] = {}

    def start(self) -> "CpuMeter":
        self.t0 = time.monotonic()
        self.c0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        return {k: 100 * (cpu_seconds(p) - self.c0[k]) / dt for k, p in self.pids.items()}


class PhaseCpu:
    """CPU use per phase of a run (% of one core), for every process that competes for
    the cores: the product, the control plane, the backend and the benchmark itself."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.marks: list[tuple[str, float, dict[str, float]]] = []

    def mark(self, phase: str) -> None:
        """`phase` has just ended (the first mark starts the clock)."""
        self.marks.append((phase, time.monotonic(), {k: cpu_seconds(p) for k, p in self.pids.items()}))

    def lines(self) -> list[str]:
        out = []
        for (_, t0, c0), (phase, t1, c1) in zip(self.marks, self.marks[1:]):
            dt = max(t1 - t0, 1e-9)
            out.append(f"{phase} ({dt:.1f} s): " + ", ".join(f"{k} {100 * (c1[k] - c0[k]) / dt:.0f}" for k in c0))
        return out


def control_plane_pids(cp: Any) -> dict[str, int]:
    """kube-apiserver's and etcd's pids (the processes whose command line names this plane's directory)."""
    pids: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        exe = argv[0].decode(errors="replace").rsplit("/", 1)[-1]
        if exe in ("kube-apiserver", "etcd") and str(cp.cluster_dir).encode() in b" ".join(argv):
            pids[exe] = int(entry.name)
    return pids


def spawn_backend(workdir: Path) -> tuple[subprocess.Popen, int]:
    from testbed.harness import free_port, wait_for_port
    port = free_port()
    log = open(workdir / "bench-backend.log", "ab")
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--backend", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, proc)
    return proc, port


def py_spy_dump(pid: int, out: Path) -> None:
    """Best effort: a py-spy stack dump of a process (needs ptrace rights)."""
    try:
        res = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
        with open(out, "a") as f:
            f.write(f"--- {time.strftime('%H:%M:%S')} pid {pid}\n{res.stdout}{res.stderr}\n")
    except (OSError, subprocess.TimeoutExpired) as exc:
        with open(out, "a") as f:
            f.write(f"py-spy failed: {exc}\n")


# -- what code runs -------------------------------------------------------------------------

def snapshot(rev: str = "HEAD") -> tuple[Path, str]:
    """Export a commit (default HEAD) to .cluster/bench-src-<sha>/ and lay out the
    `orchestrator` import namespace there (pyproject's package-dir mapping, as symlinks).

    The benchmarks run the operator and proxies from this snapshot, not from the
    working tree: on a shared checkout other people's half-finished edits would
    otherwise end up in the measured processes. Returns (src dir, sha).
    """
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    src = ROOT / ".cluster" / f"bench-src-{sha[:12]}"
    if not (src / ".complete").exists():
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        ns = src / "_pkgs" / "orchestrator"
        ns.mkdir(parents=True, exist_ok=True)
        for f in (src / "orchestrator").iterdir():
            (ns / f.name).symlink_to(f)
        for name in ("core", "proxy", "operator"):
            (ns / name).symlink_to(src / name)
        (src / ".complete").write_text(sha)
    return src, sha


def use_source(src: Optional[Path]) -> None:
    """Make this process import `orchestrator` from `src` (None: the working tree)."""
    if src is not None:
        sys.path.insert(0, str(src / "_pkgs"))


# -- the stack ----------------------------------------------------------------------------

def make_stack_class():
    from testbed.stack import Stack

    class BenchStack(Stack):
        """testbed.stack.Stack, with extra environment for the operator / proxies
        (Stack pins ORCHESTRATOR_REPORT_INTERVAL=1 and a 6 s stale horizon for fast tests;
        the benchmarks default to the production values)."""

        operator_env: dict[str, str] = {}
        proxy_env: dict[str, str] = {}
        src: Optional[Path] = None  # run main.py from this snapshot (None: the working tree)

        def install_prerequisites(self) -> None:  # type: ignore[override]
            import yaml
            crds = (self.src or ROOT) / "crds"
            self.cp.kubectl("apply", "-f", str(crds))
            self.cp.kubectl("wait", "--for=condition=Established", "crd/endpoints.orchestrator.dev", "--timeout=60s")
            self.cp.kubectl("create", "namespace", self.namespace, check=False)
            self.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(
                {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "orchestrator"}}))

        def start(self):  # type: ignore[override]
            # As Stack.start, with a longer readiness wait: on a busy 2-core machine
            # importing the proxy alone can take tens of seconds.
            from testbed.harness import wait_until
            self.install_prerequisites()
            self.start_operator()
            for i in range(self.replicas):
                self.proxies.append(self._start_proxy(f"r{i}"))
            for proxy in self.proxies:
                wait_until(lambda p=proxy: self._ready(p), timeout=180, interval=0.3,
                           message=f"proxy {proxy.name} ready")
            return self

        def _spawn(self, name, args, env, port):  # type: ignore[override]
            from testbed import stack as stack_module
            extra = self.operator_env if name == "operator" else self.proxy_env
            env = {**env, **extra}
            if self.src is None:
                return super()._spawn(name, args, env, port)
            log_path = self.workdir / f"{name}.log"
            # The snapshot's namespace layout first; the editable install's finder comes
            # after PYTHONPATH, so it never supplies a module the snapshot has.
            env["PYTHONPATH"] = str(self.src / "_pkgs")
            with open(log_path, "ab") as out:
                proc = subprocess.Popen([sys.executable, str(self.src / "main.py"), *args], stdout=out,
                                        stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=self.workdir)
            return stack_module.Process(name, proc, log_path, port)

    return BenchStack


@contextlib.contextmanager
def cluster(replicas: int, report_interval: float, stale_seconds: float, keep: bool = False,
            src: Optional[Path] = None) -> Iterator[tuple[Any, Any, Path]]:
    """Control plane + CRDs + operator + proxies; everything stopped on the way out."""
    from testbed.controlplane import ControlPlane
    BenchStack = make_stack_class()
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-", dir=ROOT / ".cluster"))
    cp = ControlPlane(keep_dir=keep)
    stack = None
    try:
        t = time.monotonic()
        cp.start()
        print(f"control plane up in {time.monotonic() - t:.1f} s; logs in {workdir}", flush=True)
        stack = BenchStack(cp, workdir, replicas=replicas)
        stack.operator_env = {"ORCHESTRATOR_REPORT_STALE_SECONDS": str(stale_seconds)}
        stack.proxy_env = {"ORCHESTRATOR_REPORT_INTERVAL": str(report_interval)}
        stack.src = src
        stack.start()
        yield cp, stack, workdir
    finally:
        if stack is not None:
            stack.stop()
        cp.stop()


def add_source_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--rev", default="HEAD",
                    help="commit to benchmark (exported to .cluster/bench-src-*); 'worktree' = the working tree")


def resolve_source(rev: str) -> tuple[Optional[Path], str]:
    if rev == "worktree":
        return None, "working tree"
    src, sha = snapshot(rev)
    use_source(src)
    return src, sha[:12]


def api_clients(cp: Any) -> tuple[Any, Any]:
    from kubernetes import client
    api = cp.api_client()
    return client.CustomObjectsApi(api), client.CoreV1Api(api)


# -- observers ------------------------------------------------------------------------------

def _ready(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _programmed_generation(obj: dict[str, Any]) -> Optional[int]:
    """The generation that status shows as observed AND programmed (None if not programmed)."""
    status = obj.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Programmed" and c.get("status") == "True":
            gen = status.get("observedGeneration")
            return gen if gen == c.get("observedGeneration") else None
    return None


class EndpointWatch(threading.Thread):
    """Watches endpoints.orchestrator.dev in all namespaces, from outside the operator.

    Counts MODIFIED events that changed `.status` (= status writes by the
    operator, the only writer of status), and tracks Ready per object.
    """

    def __init__(self, cp: Any) -> None:
        super().__init__(daemon=True)
        self.cp = cp
        self.lock = threading.Lock()
        self.status: dict[str, Any] = {}
        self.ready: dict[str, bool] = {}
        self.ready_at: dict[str, float] = {}
        self.status_writes: list[float] = []  # monotonic times of status-changing events
        self.status_log: list[tuple[float, str]] = []  # (monotonic time, key) of each status write
        self.ready_lost: list[tuple[float, str]] = []  # (monotonic time, key): Ready went from True to not True
        self.writes_of: Counter = Counter()  # key -> status writes seen (until it was deleted)
        self.writes_before_ready: dict[str, int] = {}  # key -> status writes up to the first Ready=True
        self.programmed_at: dict[tuple[str, int], float] = {}  # (key, generation) -> first time programmed
        self.events = Counter()
        self.stopped = threading.Event()
        self.synced = threading.Event()

    def run(self) -> None:
        from kubernetes import client, watch
        custom = client.CustomObjectsApi(self.cp.api_client())
        rv = ""
        while not self.stopped.is_set():
            try:
                if not rv:
                    listing = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                    with self.lock:
                        for obj in listing["items"]:
                            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                            self.status[key] = obj.get("status")
                            self.ready[key] = _ready(obj)
                    rv = listing["metadata"]["resourceVersion"]
                    self.synced.set()
                w = watch.Watch()
                for ev in w.stream(custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                   resource_version=rv, timeout_seconds=60, allow_watch_bookmarks=True):
                    if self.stopped.is_set():
                        w.stop()
                        break
                    obj, kind = ev["object"], ev["type"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    now = time.monotonic()
                    key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
                    with self.lock:
                        self.events[kind] += 1
                        if kind == "DELETED":
                            self.status.pop(key, None)
                            self.ready.pop(key, None)
                            continue
                        if kind == "MODIFIED" and obj.get("status") != self.status.get(key):
                            self.status_writes.append(now)
                            self.status_log.append((now, key))
                            self.writes_of[key] += 1
                        self.status[key] = obj.get("status")
                        r = _ready(obj)
                        if self.ready.get(key) and not r:
                            self.ready_lost.append((now, key))
                        if r and not self.ready.get(key):
                            self.ready_at.setdefault(key, now)
                            self.writes_before_ready.setdefault(key, self.writes_of[key])
                        self.ready[key] = r
                        gen = _programmed_generation(obj)
                        if gen is not None:
                            self.programmed_at.setdefault((key, gen), now)
            except Exception as exc:  # 410 Gone or a dropped connection: relist
                if "410" in str(exc) or "Expired" in str(exc):
                    rv = ""
                time.sleep(0.5)

    def ready_count(self) -> int:
        with self.lock:
            return sum(1 for v in self.ready.values() if v)

    def writes_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(1 for t in self.status_writes if t0 <= t < t1)

    def stop(self) -> None:
        self.stopped.set()


def watch_configmaps(cp: Any, namespace: str, stopped: threading.Event, handle: Any, **selectors: str) -> None:
    """Watch ConfigMaps (re-watching after every timeout or error) until `stopped`; `handle(event)` each."""
    from kubernetes import client, watch
    core = client.CoreV1Api(cp.api_client())
    while not stopped.is_set():
        try:
            w = watch.Watch()
            for ev in w.stream(core.list_namespaced_config_map, namespace, timeout_seconds=60, **selectors):
                if stopped.is_set():
                    w.stop()
                    break
                handle(ev)
        except Exception:
            time.sleep(0.5)


class RegistryWatch(threading.Thread):
    """Watches the head registry ConfigMap (what the proxies watch) and records
    (monotonic time, revision, shards, resourceVersion) of every version seen."""

    def __init__(self, cp: Any, namespace: str = NAMESPACE, name: str = REGISTRY) -> None:
        super().__init__(daemon=True)
        self.cp, self.namespace, self.name = cp, namespace, name
        self.versions: list[tuple[float, str, int, str]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        watch_configmaps(self.cp, self.namespace, self.stopped, self._seen, field_selector=f"metadata.name={self.name}")

    def _seen(self, ev: dict[str, Any]) -> None:
        cm = ev["object"]
        data = cm.data or {}
        with self.lock:
            if not self.versions or self.versions[-1][3] != cm.metadata.resource_version:
                self.versions.append((time.monotonic(), data.get("revision", ""),
                                      int(data.get("shards", "0") or 0), cm.metadata.resource_version))

    def first_after(self, t0: float) -> Optional[float]:
        with self.lock:
            return next((t for t, *_ in self.versions if t >= t0), None)

    def stop(self) -> None:
        self.stopped.set()


class ReportWatch(threading.Thread):
    """Counts writes of the proxies' report ConfigMaps (heartbeats included), per report."""

    def __init__(self, cp: Any, namespace: str = NAMESPACE, registry: str = REGISTRY) -> None:
        super().__init__(daemon=True)
        self.cp, self.namespace, self.registry = cp, namespace, registry
        self.writes: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def run(self) -> None:
        watch_configmaps(self.cp, self.namespace, self.stopped, self._seen,
                         label_selector=f"orchestrator.dev/report={self.registry}")

    def _seen(self, ev: dict[str, Any]) -> None:
        if ev["type"] in ("ADDED", "MODIFIED"):
            with self.lock:
                self.writes.append((time.monotonic(), ev["object"].metadata.name))

    def between(self, t0: float, t1: float) -> Counter:
        with self.lock:
            return Counter(name for t, name in self.writes if t0 <= t < t1)

    def stop(self) -> None:
        self.stopped.set()


def read_registry(core: Any, namespace: str = NAMESPACE, name: str = REGISTRY) -> dict[str, Any]:
    """The registry as stored: revision, shard count, bytes, endpoint count; consistent=False
    when the shards do not all carry the head's revision (a write in progress)."""
    def get(n: str) -> dict[str, Any]:
        resp = core.read_namespaced_config_map(n, namespace, _preload_content=False)
        return json.loads(resp.data)
    try:
        head = get(name)
    except Exception:
        return {"revision": "", "shards": 0, "bytes": 0, "endpoints": 0, "consistent": False}
    data = head.get("data") or {}
    revision, shards = data.get("revision", ""), int(data.get("shards", "1") or 1)
    docs = [data.get("registry.json", "")]
    for i in range(1, shards):
        try:
            docs.append((get(f"{name}-{i}").get("data") or {}).get("registry.json", ""))
        except Exception:
            docs.append("")
    count, consistent, size = 0, True, 0
    for d in docs:
        size += len(d.encode())
        try:
            doc = json.loads(d)
        except ValueError:
            consistent = False
            continue
        consistent &= doc.get("revision") == revision
        count += len(doc.get("endpoints", []))
    return {"revision": revision, "shards": shards, "bytes": size, "endpoints": count, "consistent": consistent}


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- the probe-counting backend ----------------------------------------------------------------

def run_backend(port: int) -> None:
    from aiohttp import web

    buckets: Counter[int] = Counter()
    total = [0]

    async def handle(request: web.Request) -> web.Response:
        if request.path == "/_bench/probes":
            return web.json_response({"buckets": {str(k): v for k, v in buckets.items()}, "total": total[0]})
        if request.path.endswith("/health"):
            buckets[int(time.time() * 10)] += 1
            total[0] += 1
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- kopf's per-event cost ------------------------------------------------------------------

def kopf_diffbase_cost(routes: int = 10_000, rounds: int = 200) -> None:
    """What kopf's diff-base (a deep copy of every event's body) costs for the biggest
    ConfigMaps the operator sees: a report listing `routes` routes, a 900 KiB shard."""
    import kopf

    from orchestrator.core import contract
    table = {f"svc-{i:05d}": contract.RouteReport("Healthy", "Closed", f"uid-{i:05d}-{'a' * 24}", 1)
             for i in range(routes)}
    report = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "r-report-a", "namespace": "ns"},
              "data": contract.Report("a", 0.0, "rev", table).to_data()}
    shard = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "r-1", "namespace": "ns"},
             "data": {"registry.json": "x" * 900_000}}
    storage = kopf.AnnotationsDiffBaseStorage()
    for name, raw in ((f"report of {routes:,} routes", report), ("registry shard of 900 KiB", shard)):
        body = kopf.Body(raw)
        t = time.perf_counter()
        for _ in range(rounds):
            storage.build(body=body)
        print(f"{name} ({len(json.dumps(raw)) / 1e6:.2f} MB): kopf diff-base "
              f"{1000 * (time.perf_counter() - t) / rounds:.3f} ms per event")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", type=int, help="run the probe-counting backend on this port")
    parser.add_argument("--kopf-diffbase", action="store_true", help="measure kopf's per-event diff-base copy")
    parsed = parser.parse_args()
    if parsed.kopf_diffbase:
        kopf_diffbase_cost()
    elif parsed.backend:
        run_backend(parsed.backend)
    else:
        parser.error("--backend PORT or --kopf-diffbase")
