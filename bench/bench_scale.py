"""Scale: N Endpoints on the real control plane, operator + 2 proxy replicas.

    python bench/bench_scale.py [--count 1000] [--targets-ratio 10] [--window 45] [--py-spy]
    python bench/bench_scale.py --compile-only --count 10000   # the pure compiler alone

N Endpoints point at N/10 distinct backend targets (different base paths on
one local backend, so the proxies have N/10 distinct health-probe targets),
every Endpoint with healthCheck.intervalSeconds=10. Measured from outside:

- time to create the N objects (several client threads), time until the
  registry ConfigMaps hold all N (head + shards, consistent revision), until
  both proxies route all N (/router/routes total), until all N are Ready=True;
- registry size (bytes, shards); the pure compiler's time in-process on N
  synthetic objects; operator and proxy RSS and CPU;
- steady state (nothing changing, a stable backend) over --window seconds:
  status writes per second (watch MODIFIED events that change .status;
  target none), registry writes, health probes per second per replica
  (orchestrator_health_probes_total from /metrics vs N_targets/interval) and
  their burstiness at the backend (max probes in any 1 s / 100 ms window);
- an operator restart: time until it has listed everything, and the status
  and registry writes it causes (target ~0).

The proxies run with the production report heartbeat (10 s) unless
--report-interval says otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_bench as cb  # noqa: E402

HEALTH_INTERVAL = 10.0


def spec(i: int, n_targets: int, backend: str) -> dict[str, Any]:
    return {"url": f"{backend}/t{i % n_targets}", "methods": ["GET", "POST"],
            "healthCheck": {"intervalSeconds": HEALTH_INTERVAL}}


def bench_compile(n: int, n_targets: int, rounds: int = 3) -> dict[str, float]:
    """The pure compiler on N synthetic Endpoints, in this process (best of `rounds`;
    CPU time too, which a shared machine disturbs less than wall time)."""
    from orchestrator.core.compile import EndpointObject, ObjectMeta, compile_registry
    from orchestrator.core.model import Defaults
    from orchestrator.core.registry import decode_shards, encode_shards
    objs = [EndpointObject(ObjectMeta("default", f"bench-{i:05d}", uid=f"uid-{i}", generation=1,
                                      created=f"2025-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z"),
                           spec(i, n_targets, "http://127.0.0.1:9"))
            for i in range(n)]
    defaults = Defaults()
    times, cpu, enc, dec = [], [], [], []
    previous = None
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        compiled = compile_registry(objs, [], defaults, previous)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        previous = compiled.registry
        t = time.perf_counter()
        docs = encode_shards(compiled.registry)
        enc.append(time.perf_counter() - t)
        c = time.process_time()
        decode_shards(docs)  # what each proxy replica does with a new registry
        dec.append(time.process_time() - c)
    return {"compile_s": min(times), "compile_median_s": statistics.median(times), "compile_cpu_s": min(cpu),
            "encode_s": min(enc), "decode_cpu_s": min(dec),
            "shards": len(docs), "bytes": sum(len(d) for d in docs), "routes": len(compiled.registry.routes)}


class RegistryPoller(threading.Thread):
    """Reads the registry head + shards every `every` s; notes when it first holds `want`."""

    def __init__(self, core: Any, want: int, every: float) -> None:
        super().__init__(daemon=True)
        self.core, self.want, self.every = core, want, every
        self.full_at: Optional[float] = None
        self.last: dict[str, Any] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set() and self.full_at is None:
            try:
                self.last = cb.read_registry(self.core)
                if self.last["consistent"] and self.last["endpoints"] >= self.want:
                    self.full_at = time.monotonic()
            except Exception:
                pass
            self.stopped.wait(self.every)


def routes_total(url: str) -> int:
    try:
        return httpx.get(f"{url}/router/routes", timeout=30).json()["total"]
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


def probes(url: str) -> float:
    return cb.metric_sum(httpx.get(f"{url}/metrics", timeout=30).text, "orchestrator_health_probes_total")


def backend_buckets(port: int) -> dict[int, int]:
    data = httpx.get(f"http://127.0.0.1:{port}/_bench/probes", timeout=10).json()
    return {int(k): v for k, v in data["buckets"].items()}


def wait(pred, timeout: float, every: float = 0.5) -> Optional[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(every)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--targets-ratio", type=int, default=10, help="N / this = distinct backend targets")
    ap.add_argument("--threads", type=int, default=8, help="client threads creating the objects")
    ap.add_argument("--window", type=float, default=45.0, help="steady-state window, seconds")
    ap.add_argument("--restart-window", type=float, default=30.0)
    ap.add_argument("--report-interval", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=600.0, help="max wait for each convergence phase")
    ap.add_argument("--py-spy", action="store_true", help="py-spy dump operator/proxy during the slow phases")
    ap.add_argument("--compile-only", action="store_true",
                    help="only the pure compiler, in this process, on the working tree (no control plane)")
    cb.add_source_args(ap)
    args = ap.parse_args()
    src, label = cb.resolve_source("worktree" if args.compile_only else args.rev)
    print(f"benchmarking {label}", flush=True)
    n = args.count
    n_targets = max(1, n // args.targets_ratio)

    c = bench_compile(n, n_targets, rounds=7 if args.compile_only else 3)
    print(f"pure compiler, {n} Endpoints: compile {c['compile_s'] * 1000:.0f} ms (median "
          f"{c['compile_median_s'] * 1000:.0f}, CPU {c['compile_cpu_s'] * 1000:.0f}), encode shards "
          f"{c['encode_s'] * 1000:.0f} ms, decode shards (CPU) {c['decode_cpu_s'] * 1000:.0f} ms, "
          f"{c['bytes'] / 1e6:.2f} MB in {c['shards']} shard(s)", flush=True)
    if args.compile_only:
        return 0

    with cb.cluster(2, args.report_interval, stale_seconds=30, src=src) as (cp, stack, workdir):
        backend_proc, backend_port = cb.spawn_backend(workdir)
        try:
            return run(args, cp, stack, workdir, backend_port, n, n_targets, c)
        finally:
            from testbed.harness import stop
            stop(backend_proc)


def run(args, cp, stack, workdir, backend_port: int, n: int, n_targets: int, comp: dict) -> int:
    from kubernetes import client as kclient
    backend = f"http://127.0.0.1:{backend_port}"
    _custom, core = cb.api_clients(cp)
    op_pid = stack.operator.proc.pid
    pids = {"operator": op_pid, **{f"proxy-{i}": p.proc.pid for i, p in enumerate(stack.proxies)}}
    epw = cb.EndpointWatch(cp)
    regw = cb.RegistryWatch(cp)
    epw.start()
    regw.start()
    epw.synced.wait(30)
    spy = workdir / "py-spy.txt"
    out: dict[str, Any] = {}

    # -- create N --------------------------------------------------------------
    local = threading.local()

    def create(i: int) -> None:
        api = getattr(local, "api", None)
        if api is None:
            api = local.api = kclient.CustomObjectsApi(cp.api_client())
        body = {"apiVersion": "orchestrator.dev/v1alpha1", "kind": "Endpoint",
                "metadata": {"name": f"bench-{i:05d}", "namespace": "default"},
                "spec": spec(i, n_targets, backend)}
        for attempt in range(5):
            try:
                api.create_namespaced_custom_object(cb.GROUP, cb.VERSION, "default", cb.PLURAL, body)
                return
            except kclient.exceptions.ApiException as exc:
                if exc.status == 409:
                    return
                time.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"could not create bench-{i:05d}")

    poller = RegistryPoller(core, n, every=1.0 if n <= 2000 else 2.0)
    cpu = cb.CpuMeter(pids).start()
    t0 = time.monotonic()
    poller.start()
    with ThreadPoolExecutor(args.threads) as pool:
        for k, _ in enumerate(pool.map(create, range(n))):
            if (k + 1) % max(1, n // 10) == 0:
                print(f"  created {k + 1}/{n} at {time.monotonic() - t0:.1f} s; registry holds "
                      f"{poller.last.get('endpoints', 0)}, ready {epw.ready_count()}", flush=True)
            if args.py_spy and k + 1 == n // 2:
                cb.py_spy_dump(op_pid, spy)
    t_created = time.monotonic()
    out["create_s"] = t_created - t0
    print(f"created {n} in {out['create_s']:.1f} s ({n / out['create_s']:.0f}/s)", flush=True)

    spied = False
    deadline = time.monotonic() + args.timeout
    while poller.full_at is None and time.monotonic() < deadline:
        if args.py_spy and not spied and time.monotonic() - t_created > 5:
            cb.py_spy_dump(op_pid, spy)
            spied = True
        time.sleep(0.5)
    poller.stopped.set()
    out["registry_s"] = (poller.full_at - t0) if poller.full_at else None
    reg = cb.read_registry(core)
    print(f"registry holds {reg['endpoints']} at {fmt_s(out['registry_s'])} after the first create "
          f"({reg['bytes'] / 1e6:.2f} MB, {reg['shards']} shard(s))", flush=True)

    t_routes = wait(lambda: all(routes_total(p.url) >= n for p in stack.proxies),
                    max(1.0, deadline - time.monotonic()), every=1.0)
    out["proxies_s"] = (t_routes - t0) if t_routes else None
    print(f"both proxies route all {n} at {fmt_s(out['proxies_s'])}", flush=True)

    spied = False

    def all_ready() -> bool:
        nonlocal spied
        if args.py_spy and not spied and epw.ready_count() < n * 0.7:
            cb.py_spy_dump(op_pid, spy)
            cb.py_spy_dump(stack.proxies[0].proc.pid, spy)
            spied = True
        return epw.ready_count() >= n
    t_ready = wait(all_ready, max(1.0, deadline - time.monotonic()))
    out["ready_s"] = (t_ready - t0) if t_ready else None
    out["cpu_converge"] = cpu.stop()
    writes_converge = len(epw.status_writes)
    print(f"all {n} Ready=True at {fmt_s(out['ready_s'])} (ready now: {epw.ready_count()}); "
          f"status writes so far {writes_converge}; registry versions {len(regw.versions)}", flush=True)

    # -- settle: first health rounds flip Unknown -> Healthy; wait for quiet -----------
    t_settle = time.monotonic()
    quiet_for = max(2 * args.report_interval, 2 * HEALTH_INTERVAL) + 2

    def quiet() -> bool:
        last = epw.status_writes[-1] if epw.status_writes else 0.0
        return time.monotonic() - last >= quiet_for and time.monotonic() - t_settle >= quiet_for
    t_quiet = wait(quiet, args.timeout, every=1.0)
    out["settle_s"] = (t_quiet - t0) if t_quiet else None
    print(f"status quiet for {quiet_for:.0f} s at {fmt_s(out['settle_s'])}; status writes in total "
          f"{len(epw.status_writes)}", flush=True)

    # -- steady state window ---------------------------------------------------------------
    w0 = time.monotonic()
    p0 = [probes(p.url) for p in stack.proxies]
    regs0 = len(regw.versions)
    cpu = cb.CpuMeter(pids).start()
    time.sleep(args.window)
    w1 = time.monotonic()
    p1 = [probes(p.url) for p in stack.proxies]
    out["cpu_steady"] = cpu.stop()
    wall0, wall1 = time.time() - (time.monotonic() - w0), time.time() - (time.monotonic() - w1)
    buckets = backend_buckets(backend_port)
    lo, hi = int(wall0 * 10) + 1, int(wall1 * 10) - 1  # whole 100 ms buckets inside the window
    series = [buckets.get(b, 0) for b in range(lo, hi)]
    per_s = [sum(series[i:i + 10]) for i in range(0, max(0, len(series) - 9))]
    out["steady_status_writes"] = epw.writes_between(w0, w1)
    out["steady_registry_writes"] = len(regw.versions) - regs0
    out["probe_rates"] = [(b - a) / (w1 - w0) for a, b in zip(p0, p1)]
    out["backend_rate"] = sum(series) / (len(series) / 10) if series else 0.0
    out["burst_1s"] = max(per_s) if per_s else 0
    out["min_1s"] = min(per_s) if per_s else 0
    out["burst_100ms"] = max(series) if series else 0
    out["rss"] = {k: cb.rss_mb(p) for k, p in pids.items()}
    expected = n_targets / HEALTH_INTERVAL
    print(f"steady window {w1 - w0:.0f} s: status writes {out['steady_status_writes']}, registry writes "
          f"{out['steady_registry_writes']}, probes/s per replica {[round(r, 1) for r in out['probe_rates']]} "
          f"(expected {expected:.1f}), at the backend {out['backend_rate']:.1f}/s, max in 1 s "
          f"{out['burst_1s']}, min in 1 s {out['min_1s']}, max in 100 ms {out['burst_100ms']}", flush=True)

    # -- operator restart ------------------------------------------------------------------
    head_rv = regw.versions[-1][3] if regw.versions else ""
    regs_before = len(regw.versions)
    log_path = stack.operator.log_path
    offset = log_path.stat().st_size
    stack.stop_operator()
    r0 = time.monotonic()
    stack.start_operator()
    pids["operator"] = stack.operator.proc.pid

    def primed() -> bool:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        return "found registry revision" in text or "no usable registry yet" in text
    t_primed = wait(primed, 180, every=0.1)
    out["restart_primed_s"] = (t_primed - r0) if t_primed else None
    cpu = cb.CpuMeter({"operator": stack.operator.proc.pid}).start()
    time.sleep(args.restart_window)
    out["cpu_restart"] = cpu.stop()
    r1 = time.monotonic()
    out["restart_status_writes"] = epw.writes_between(r0, r1)
    new_versions = regw.versions[regs_before:]
    out["restart_registry_writes"] = len(new_versions)
    out["restart_same_revision"] = all(v[1] == regw.versions[regs_before - 1][1] for v in new_versions) \
        if regs_before else None
    out["rss_operator_after_restart"] = cb.rss_mb(stack.operator.proc.pid)
    print(f"operator restart: listed everything after {fmt_s(out['restart_primed_s'])}; in the next "
          f"{r1 - r0:.0f} s: status writes {out['restart_status_writes']}, registry writes "
          f"{out['restart_registry_writes']} (head resourceVersion before {head_rv})", flush=True)
    epw.stop()
    regw.stop()
    report(args, n, n_targets, comp, reg, out)
    return 0


def fmt_s(v: Optional[float]) -> str:
    return "never" if v is None else f"{v:.1f} s"


def report(args, n: int, n_targets: int, comp: dict, reg: dict, out: dict) -> None:
    expected = n_targets / HEALTH_INTERVAL
    print(f"\n## Scale: {n} Endpoints, {n_targets} probe targets, 2 proxy replicas, "
          f"report heartbeat {args.report_interval:g} s\n")
    rows = [
        ["create N objects (8 client threads)", fmt_s(out["create_s"]), f"{n / out['create_s']:.0f} objects/s"],
        ["registry holds all N (from first create)", fmt_s(out["registry_s"]), ""],
        ["both proxies route all N", fmt_s(out["proxies_s"]), ""],
        ["all N Ready=True", fmt_s(out["ready_s"]), ""],
        ["status quiet (health settled)", fmt_s(out["settle_s"]), ""],
        ["registry size", f"{reg['bytes'] / 1e6:.2f} MB", f"{reg['shards']} shard(s)"],
        ["pure compile_registry, N objects", f"{comp['compile_s'] * 1000:.0f} ms",
         f"median {comp['compile_median_s'] * 1000:.0f} ms; encode_shards {comp['encode_s'] * 1000:.0f} ms"],
        ["RSS operator / proxies", " / ".join(f"{v:.0f} MB" for v in out["rss"].values()), ""],
        ["CPU while converging (% of a core)", ", ".join(f"{k} {v:.0f}" for k, v in out["cpu_converge"].items()), ""],
        [f"steady state {args.window:.0f} s: status writes", str(out["steady_status_writes"]),
         f"{out['steady_status_writes'] / args.window:.2f}/s (target 0)"],
        ["steady state: registry writes", str(out["steady_registry_writes"]), "target 0"],
        ["steady state CPU (% of a core)", ", ".join(f"{k} {v:.0f}" for k, v in out["cpu_steady"].items()), ""],
        ["health probes/s per replica", ", ".join(f"{r:.1f}" for r in out["probe_rates"]),
         f"expected {expected:.1f} (= {n_targets} targets / {HEALTH_INTERVAL:g} s)"],
        ["probes at the backend (all replicas)", f"{out['backend_rate']:.1f}/s",
         f"max in any 1 s {out['burst_1s']}, min {out['min_1s']}, max in 100 ms {out['burst_100ms']} "
         f"(even spread: {2 * expected:.0f}/s, {2 * expected / 10:.1f}/100 ms)"],
        ["operator restart: listed everything", fmt_s(out["restart_primed_s"]), ""],
        [f"operator restart: writes in {args.restart_window:.0f} s",
         f"status {out['restart_status_writes']}, registry {out['restart_registry_writes']}",
         "target ~0" + ("" if out["restart_same_revision"] in (None, True) else " (revision CHANGED)")],
        ["operator after restart: CPU, RSS", f"{out['cpu_restart']['operator']:.0f} %, "
                                            f"{out['rss_operator_after_restart']:.0f} MB", ""],
    ]
    print(cb.table(["measure", "value", "notes"], rows))


if __name__ == "__main__":
    sys.exit(main())
