"""Propagation latency: from `kubectl apply` to traffic on every proxy replica.

    python bench/bench_propagation.py [--creates 100] [--edits 40] [--deletes 40] [--replicas 3]

Real etcd + kube-apiserver, the operator and 3 proxy replicas as local
processes (tests/cluster), one local backend. For each change:

- create: a new Endpoint; t0 = the create call has returned (the API server
  accepted it); done when GET /orchestrator/<route>/x answers 200 on ALL
  replicas;
- edit: methods [GET] -> [GET, POST]; done when POST answers 200 (was 405)
  on all replicas; GET on the same route is checked on every poll and must
  stay 200 (no 404/503 window on the changed route);
- delete: done when GET answers 404 on all replicas.

One thread per replica polls every ~5 ms. A separate thread keeps hitting
stable routes on every replica for the whole run: any non-200 there is an
error caused by a registry swap (target: zero). Also recorded per change: when
the new registry head reached a watcher (operator share of the latency) and,
for creates, when the Endpoint showed Ready=True (the status path).

Target: p99 < 500 ms for new-route propagation.
"""

from __future__ import annotations

import argparse
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

POLL_INTERVAL = 0.005
TIMEOUT = 30.0
STABLE = 5


class Poller:
    """One persistent HTTP client per replica; poll all replicas concurrently."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
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
            time.sleep(POLL_INTERVAL)
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

    def __init__(self, urls: list[str], routes: list[str]) -> None:
        super().__init__(daemon=True)
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
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
        for c in self.clients:
            c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--creates", type=int, default=100)
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

    from support.harness import start_backend, stop

    backend = start_backend()
    try:
        with cb.cluster(args.replicas, args.report_interval, stale_seconds=30, src=src) as (cp, stack, workdir):
            return run(args, cp, stack, workdir, backend)
    finally:
        stop(backend.proc)


def run(args, cp, stack, workdir, backend) -> int:
    custom, _core = cb.api_clients(cp)
    urls = [p.url for p in stack.proxies]
    epw = cb.EndpointWatch(cp)
    regw = cb.RegistryWatch(cp)
    epw.start()
    regw.start()
    epw.synced.wait(30)

    def body(name: str, methods: list[str]) -> dict:
        return cb_manifest(name, f"{backend.url}/prop/{name}", methods=methods)

    # Stable routes, checked throughout.
    stable = [f"stable-{i}" for i in range(STABLE)]
    for name in stable:
        custom.create_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, body(name, ["GET"]))
    poller = Poller(urls)
    for name in stable:
        if None in poller.wait_all("GET", f"/orchestrator/{name}/x", 200):
            raise RuntimeError(f"route {name} never reached the proxies:\n{stack.logs()}")
    checker = StableChecker(urls, stable)
    checker.start()
    time.sleep(1.0)

    results: dict[str, dict[str, list[float]]] = {k: {"all": [], "first": [], "registry": [], "ready": []}
                                                  for k in ("create", "edit", "delete")}
    failures: Counter = Counter()
    names = [f"prop-{i:03d}" for i in range(args.creates)]
    create_t0: dict[str, float] = {}
    cpu = cb.CpuMeter({"operator": stack.operator.proc.pid,
                       **{f"proxy-{i}": p.proc.pid for i, p in enumerate(stack.proxies)}}).start()
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
        custom.create_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, body(name, ["GET"]))
        t0 = time.monotonic()
        create_t0[name] = t0
        record("create", t0, poller.wait_all("GET", f"/orchestrator/{name}/x", 200))
        if args.py_spy and i == args.creates // 2:
            cb.py_spy_dump(stack.operator.proc.pid, workdir / "py-spy-propagation.txt")
        time.sleep(random.uniform(0.05, 0.15))
        progress(i, args.creates, "create")

    for i, name in enumerate(names[:args.edits]):
        custom.patch_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, name,
                                              {"spec": {"methods": ["GET", "POST"]}})
        t0 = time.monotonic()
        record("edit", t0, poller.wait_all("POST", f"/orchestrator/{name}/x", 200, check_get=True))
        time.sleep(random.uniform(0.05, 0.15))
        progress(i, args.edits, "edit")

    for i, name in enumerate(reversed(names[-args.deletes:])):
        custom.delete_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, name)
        t0 = time.monotonic()
        record("delete", t0, poller.wait_all("GET", f"/orchestrator/{name}/x", 404))
        time.sleep(random.uniform(0.05, 0.15))
        progress(i, args.deletes, "delete")

    elapsed = time.monotonic() - started
    cpu_pct = cpu.stop()
    # Ready=True for the creates (the status path: reports -> operator -> status).
    deadline = time.monotonic() + 30
    kept = names[: args.creates - args.deletes]
    while time.monotonic() < deadline and not all(f"default/{n}" in epw.ready_at for n in kept):
        time.sleep(0.2)
    for n in names:
        if f"default/{n}" in epw.ready_at:
            results["create"]["ready"].append(epw.ready_at[f"default/{n}"] - create_t0[n])
    checker.stop()
    poller.close()
    epw.stop()
    regw.stop()

    print(f"\n## Propagation ({args.replicas} proxy replicas, report heartbeat {args.report_interval:g} s, "
          f"{elapsed:.0f} s run)\n")
    rows = []
    for kind in ("create", "edit", "delete"):
        for what, label in (("all", "traffic on ALL replicas"), ("first", "traffic on the first replica"),
                            ("registry", "registry head written (watcher saw it)"),
                            ("ready", "status Ready=True")):
            vals = results[kind][what]
            if not vals:
                continue
            s = cb.summary_ms(vals)
            rows.append([kind, label, s["n"], s["p50"], s["p90"], s["p99"], s["max"]])
    print(cb.table(["change", "measured until", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows))
    other_bad = {k: v for k, v in checker.codes.items() if k != 200}
    print(f"\nstable routes: {sum(checker.codes.values())} requests during the run, non-200: {other_bad or 'none'}")
    print(f"GET on the route being edited: non-200 answers: {dict(poller.get_errors) or 'none'}")
    print(f"timeouts (no propagation within {TIMEOUT:g} s): {dict(failures) or 'none'}")
    print(f"registry versions written: {len(regw.versions)}; status writes seen: {len(epw.status_writes)}")
    print("CPU during the run (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu_pct.items()))
    p99 = cb.summary_ms(results["create"]["all"])["p99"]
    print(f"\ntarget p99 < 500 ms for a new route on all replicas: {'MET' if p99 < 500 else 'MISSED'} ({p99:.0f} ms)")
    return 0 if not failures and not other_bad else 1


def cb_manifest(name: str, url: str, **spec) -> dict:
    from stack import endpoint_manifest
    return endpoint_manifest(name, url, **spec)


def progress(i: int, n: int, what: str) -> None:
    if (i + 1) % 20 == 0 or i + 1 == n:
        print(f"  {what}: {i + 1}/{n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
