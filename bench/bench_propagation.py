"""Propagation and status latency: from an API call to traffic on every proxy
replica, and to the Endpoint's status saying so.

    python bench/bench_propagation.py [--creates 100] [--burst 100] [--edits 40] [--deletes 40] [--replicas 3]

Real etcd + kube-apiserver, the operator and 3 proxy replicas as local
processes (tests/cluster), one local backend. Phases:

- stream create: a new Endpoint, one after the other (~0.3 s apart: 100 over
  ~30 s); t0 = the create call has returned; done when GET
  /orchestrator/<route>/x answers 200 on ALL replicas; also when its status
  first showed Ready=True;
- burst create: `--burst` Endpoints created as fast as 4 client threads can;
  Ready=True per Endpoint from its own create, and when the last route
  answered on every replica;
- edit: methods [GET] -> [GET, POST]; done when POST answers 200 (was 405)
  on all replicas; GET on the same route is checked on every poll and must
  stay 200 (no 404/503 window); also when status showed observedGeneration
  and Programmed=True at the new generation;
- delete: done when GET answers 404 on all replicas;
- outage (`--outage S`): kube-apiserver killed for S seconds, then how soon
  a new Endpoint routes, and whether Endpoints that were Ready all along got
  status writes or Events they should not;
- steady state: once no status has been written for 10 s (first health
  results settle within a probe interval or two), `--steady` seconds with
  nothing changing: status, registry and report writes.

One thread per replica polls every ~10 ms, and a separate thread keeps
hitting stable routes on every replica (any non-200 there is an error caused
by a registry swap), every ~50 ms: light enough not to starve the processes
under test on a 2-core machine. Status writes per Endpoint are counted from a
watch (the operator is the only writer of status).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_bench as cb  # noqa: E402

POLL_INTERVAL = 0.01
STABLE_INTERVAL = 0.05
CLIENTS = 4
STALE_SECONDS = 30.0  # the operator's stale horizon in these runs (production)
QUIET = 10.0  # seconds without a status write before the steady window starts
TIMEOUT = 30.0
STABLE = 5


class Poller:
    """One persistent HTTP client per replica; poll all replicas concurrently."""

    def __init__(self, urls: list[str], interval: float = POLL_INTERVAL) -> None:
        self.urls = urls
        self.interval = interval
        self.clients = [httpx.Client(base_url=u, timeout=5.0) for u in urls]
        self.pool = ThreadPoolExecutor(len(urls))
        self.get_errors: Counter = Counter()

    def _poll(self, i: int, method: str, path: str, want: int, check_get: bool) -> Optional[float]:
        client = self.clients[i]
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                status = client.request(method, path).status_code
            except httpx.HTTPError:
                status = -1
            now = time.monotonic()
            if check_get:
                g = client.get(path).status_code
                if g != 200:
                    self.get_errors[g] += 1
            if status == want:
                return now
            time.sleep(self.interval)
        return None

    def wait_all(self, method: str, path: str, want: int, check_get: bool = False) -> list[Optional[float]]:
        futures = [self.pool.submit(self._poll, i, method, path, want, check_get) for i in range(len(self.urls))]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.pool.shutdown()
        for c in self.clients:
            c.close()


class StableChecker(threading.Thread):
    """Keeps requesting routes that never change, on every replica; counts answers."""

    def __init__(self, urls: list[str], routes: list[str], interval: float = STABLE_INTERVAL) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.clients = [httpx.Client(base_url=u, timeout=5.0) for u in urls]
        self.routes = routes
        self.codes: Counter = Counter()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            for c in self.clients:
                for r in self.routes:
                    try:
                        self.codes[c.get(f"/orchestrator/{r}/x").status_code] += 1
                    except httpx.HTTPError as exc:
                        self.codes[type(exc).__name__] += 1
            time.sleep(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        for c in self.clients:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--creates", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100, help="Endpoints created at once from 4 clients (0: skip)")
    ap.add_argument("--steady", type=float, default=30.0, help="seconds of steady state to count writes in")
    ap.add_argument("--poll-ms", type=float, default=POLL_INTERVAL * 1000,
                    help="pause between polls of a changed route, per replica (issue 4's runs: 5)")
    ap.add_argument("--stable-ms", type=float, default=STABLE_INTERVAL * 1000,
                    help="pause between rounds over the stable routes (issue 4's runs: 10)")
    ap.add_argument("--outage", type=float, default=0.0,
                    help="at the end, stop kube-apiserver this many seconds (0: skip; the issue's scenario: 20)")
    ap.add_argument("--settle", type=float, default=150.0, help="max seconds to wait for health to settle first")
    ap.add_argument("--edits", type=int, default=40)
    ap.add_argument("--deletes", type=int, default=40)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--report-interval", type=float, default=10.0,
                    help="proxies' report heartbeat (ORCHESTRATOR_REPORT_INTERVAL; production default 10)")
    ap.add_argument("--py-spy", action="store_true", help="py-spy dump the operator and a proxy mid-run")
    cb.add_source_args(ap)
    args = ap.parse_args()
    src, label = cb.resolve_source(args.rev)
    print(f"benchmarking {label}", flush=True)
    assert args.edits <= args.creates and args.deletes <= args.creates

    from testbed.harness import start_backend, stop

    backend = start_backend()
    try:
        with cb.cluster(args.replicas, args.report_interval, stale_seconds=STALE_SECONDS, src=src) as (cp, stack, workdir):
            return run(args, cp, stack, workdir, backend)
    finally:
        stop(backend.proc)


def run(args, cp, stack, workdir, backend) -> int:
    custom, _core = cb.api_clients(cp)
    urls = [p.url for p in stack.proxies]
    epw = cb.EndpointWatch(cp)
    regw = cb.RegistryWatch(cp)
    repw = cb.ReportWatch(cp)
    for w in (epw, regw, repw):
        w.start()
    epw.synced.wait(30)

    def body(name: str, methods: list[str]) -> dict:
        return cb_manifest(name, f"{backend.url}/prop/{name}", methods=methods)

    def create(name: str) -> float:
        custom.create_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, body(name, ["GET"]))
        return time.monotonic()

    # Stable routes, checked throughout.
    stable = [f"stable-{i}" for i in range(STABLE)]
    for name in stable:
        create(name)
    poller = Poller(urls, args.poll_ms / 1000)
    for name in stable:
        if None in poller.wait_all("GET", f"/orchestrator/{name}/x", 200):
            raise RuntimeError(f"route {name} never reached the proxies:\n{stack.logs()}")
    checker = StableChecker(urls, stable, args.stable_ms / 1000)
    checker.start()
    time.sleep(1.0)

    results: dict[str, dict[str, list[float]]] = {
        k: {"all": [], "first": [], "registry": [], "ready": [], "programmed": []}
        for k in ("create", "burst", "edit", "delete")}
    failures: Counter = Counter()
    names = [f"prop-{i:03d}" for i in range(args.creates)]
    create_t0: dict[str, float] = {}
    cpu = cb.CpuMeter({"operator": stack.operator.proc.pid,
                       **{f"proxy-{i}": p.proc.pid for i, p in enumerate(stack.proxies)}}).start()
    phases = cb.PhaseCpu({**cpu.pids, **cb.control_plane_pids(cp), "backend": backend.proc.pid,
                          "this benchmark": os.getpid()})
    phases.mark("start")
    started = time.monotonic()

    def record(kind: str, t0: float, done: list[Optional[float]]) -> None:
        if any(d is None for d in done):
            failures[kind] += 1
            return
        results[kind]["all"].append(max(done) - t0)  # type: ignore[type-var]
        results[kind]["first"].append(min(done) - t0)  # type: ignore[type-var]
        reg = regw.first_after(t0)
        if reg is not None:
            results[kind]["registry"].append(reg - t0)

    for i, name in enumerate(names):
        t0 = create(name)
        create_t0[name] = t0
        record("create", t0, poller.wait_all("GET", f"/orchestrator/{name}/x", 200))
        if args.py_spy and i == args.creates // 2:
            cb.py_spy_dump(stack.operator.proc.pid, workdir / "py-spy-propagation.txt")
        time.sleep(random.uniform(0.05, 0.15))
        progress(i, args.creates, "create")

    phases.mark("stream create")
    burst_names = [f"burst-{i:03d}" for i in range(args.burst)]
    burst_t0: dict[str, float] = {}
    burst_routed = float("nan")
    if burst_names:
        b0 = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            for name, t in zip(burst_names, pool.map(create, burst_names)):
                burst_t0[name] = t
        # Coarse on purpose (one route after the other): when the LAST route answers everywhere.
        for name in burst_names:
            if None in poller.wait_all("GET", f"/orchestrator/{name}/x", 200):
                failures["burst"] += 1
        burst_routed = time.monotonic() - b0
        print(f"  burst: {len(burst_names)} created in {max(burst_t0.values()) - b0:.1f} s", flush=True)
        phases.mark("burst")

    edit_t0: dict[str, float] = {}
    phases.mark("(between)")
    for i, name in enumerate(names[:args.edits]):
        custom.patch_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, name,
                                              {"spec": {"methods": ["GET", "POST"]}})
        t0 = time.monotonic()
        edit_t0[name] = t0
        record("edit", t0, poller.wait_all("POST", f"/orchestrator/{name}/x", 200, check_get=True))
        time.sleep(random.uniform(0.05, 0.15))
        progress(i, args.edits, "edit")

    phases.mark("edit")
    # Status: Ready=True for creates, Programmed at generation 2 for edits (wait for them before deleting).
    deadline = time.monotonic() + 60
    want_ready = [f"default/{n}" for n in names + burst_names]
    want_prog = [(f"default/{n}", 2) for n in edit_t0]
    while time.monotonic() < deadline and not (all(k in epw.ready_at for k in want_ready)
                                               and all(k in epw.programmed_at for k in want_prog)):
        time.sleep(0.2)

    phases.mark("(waiting for status)")
    for i, name in enumerate(reversed(names[len(names) - args.deletes:])):
        custom.delete_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, name)
        t0 = time.monotonic()
        record("delete", t0, poller.wait_all("GET", f"/orchestrator/{name}/x", 404))
        time.sleep(random.uniform(0.05, 0.15))
        progress(i, args.deletes, "delete")

    phases.mark("delete")
    elapsed = time.monotonic() - started
    cpu_pct = cpu.stop()
    for kind, t0s in (("create", create_t0), ("burst", burst_t0)):
        for n, t0 in t0s.items():
            if f"default/{n}" in epw.ready_at:
                results[kind]["ready"].append(epw.ready_at[f"default/{n}"] - t0)
    for n, t0 in edit_t0.items():
        if (f"default/{n}", 2) in epw.programmed_at:
            results["edit"]["programmed"].append(epw.programmed_at[(f"default/{n}", 2)] - t0)
    writes_to_ready = [epw.writes_before_ready[k] for k in want_ready if k in epw.writes_before_ready]

    # Steady state: nothing changes. First the health checks settle (first results
    # arrive within an interval or two and each moves the status), then count writes.
    q0 = time.monotonic()
    while time.monotonic() - q0 < args.settle and epw.writes_between(time.monotonic() - QUIET, time.monotonic()):
        time.sleep(0.5)
    settled = time.monotonic() - q0
    s0 = time.monotonic()
    regs0 = len(regw.versions)
    time.sleep(args.steady)
    s1 = time.monotonic()
    steady_status = epw.writes_between(s0, s1)
    steady_registry = len(regw.versions) - regs0
    steady_reports = repw.between(s0, s1)

    outage = run_outage(args, cp, stack, custom, poller, epw, create) if args.outage else None

    checker.stop()
    poller.close()
    for w in (epw, regw, repw):
        w.stop()

    print(f"\n## Propagation ({args.replicas} proxy replicas, report heartbeat {args.report_interval:g} s, "
          f"{elapsed:.0f} s run)\n")
    rows = []
    labels = (("all", "traffic on ALL replicas"), ("first", "traffic on the first replica"),
              ("registry", "registry head written (watcher saw it)"), ("ready", "status Ready=True"),
              ("programmed", "status observedGeneration + Programmed at the new generation"))
    for kind in ("create", "burst", "edit", "delete"):
        for what, label in labels:
            vals = results[kind][what]
            if not vals:
                continue
            st = cb.summary_ms(vals)
            rows.append([kind, label, st["n"], st["p50"], st["p90"], st["p99"], st["max"]])
    print(cb.table(["change", "measured until", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))
    if burst_names:
        print(f"\nburst: the last of {len(burst_names)} routes answered on every replica "
              f"{burst_routed:.2f} s after the first create")
    other_bad = {k: v for k, v in checker.codes.items() if k != 200}
    print(f"stable routes: {sum(checker.codes.values())} requests during the run, non-200: {other_bad or 'none'}")
    print(f"GET on the route being edited: non-200 answers: {dict(poller.get_errors) or 'none'}")
    print(f"timeouts (no propagation within {TIMEOUT:g} s): {dict(failures) or 'none'}")
    print(f"registry versions written: {len(regw.versions)}; status writes seen: {len(epw.status_writes)}")
    if writes_to_ready:
        dist = Counter(writes_to_ready)
        print(f"status writes per new Endpoint up to Ready=True: mean {sum(writes_to_ready) / len(writes_to_ready):.2f}, "
              f"max {max(writes_to_ready)}, distribution {dict(sorted(dist.items()))}")
    hb = args.report_interval
    per_replica = ", ".join(f"{k.rsplit('-', 1)[-1]} {v}" for k, v in sorted(steady_reports.items())) or "none"
    print(f"status quiet (no write for {QUIET:g} s) {settled:.0f} s after the last change")
    print(f"steady state {s1 - s0:.0f} s: status writes {steady_status}, registry writes {steady_registry}, "
          f"report writes per replica {per_replica} (heartbeat {hb:g} s: at most {int((s1 - s0) / hb) + 1} each)")
    print("CPU during the run (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu_pct.items()))
    print("CPU by phase (% of one core; other sessions' processes not shown):")
    for line in phases.lines():
        print(f"  {line}")
    if outage is not None:
        print(f"\n## API server outage ({args.outage:g} s, kube-apiserver SIGKILLed and restarted)\n")
        for line in outage:
            print(line)
    return 0 if not failures and not other_bad else 1


def run_outage(args, cp, stack, custom, poller, epw, create) -> list[str]:
    """Kill kube-apiserver for `--outage` seconds; then: how soon a new Endpoint routes,
    and whether the Endpoints that were Ready all along get status writes or Events."""
    def programmed_events() -> int:
        events = _core_api(cp).list_namespaced_event("default", field_selector="reason=Programmed").items
        return sum(e.count or 1 for e in events)

    existing = [k for k, ready in epw.ready.items() if ready]
    # Health settled first (default probes: every 30 s, 2 in a row), so a status write
    # after the outage can only come from the outage.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any((epw.status.get(k) or {}).get("health") == "Unknown" for k in existing):
        time.sleep(1)
    events_before = programmed_events()
    killed = time.monotonic()
    log_from = len(stack.operator.log())
    cp.kill_apiserver()
    time.sleep(args.outage)
    cp.start_apiserver()
    back = time.monotonic()
    while True:  # the first requests after /readyz can still meet a handler being installed
        try:
            t0 = create("after-outage")
            break
        except Exception:
            if time.monotonic() - back > 20:
                raise
            time.sleep(0.05)
    done = poller.wait_all("GET", "/orchestrator/after-outage/x", 200)
    routed = max(done) - back if None not in done else float("nan")
    # A wrong conclusion ("every replica is stale") would come within one stale horizon.
    time.sleep(STALE_SECONDS + 10)
    rewritten = {k for t, k in epw.status_log if t >= back and k in existing}
    lost = {k for t, k in epw.ready_lost if t >= killed and k in existing}
    events_after = programmed_events() - 1  # the new Endpoint's own
    log = stack.operator.log()[log_from:]
    return [
        f"new Endpoint routed on all replicas {routed:.2f} s after the API server answered again "
        f"(create returned after {t0 - back:.2f} s)",
        f"Endpoints Ready before the outage: {len(existing)}; Ready left True for {len(lost)}; status rewritten "
        f"in the {STALE_SECONDS + 10:g} s after for {len(rewritten)}; Programmed Events posted again: "
        f"{events_after - events_before}",
        f"operator log during and after: {log.count(chr(10))} lines, {log.count('Traceback')} tracebacks",
    ]


def _core_api(cp):
    from kubernetes import client
    return client.CoreV1Api(cp.api_client())


def cb_manifest(name: str, url: str, **spec) -> dict:
    from testbed.stack import endpoint_manifest
    return endpoint_manifest(name, url, **spec)


def progress(i: int, n: int, what: str) -> None:
    if (i + 1) % 20 == 0 or i + 1 == n:
        print(f"  {what}: {i + 1}/{n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
