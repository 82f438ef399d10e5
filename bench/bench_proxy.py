#!/usr/bin/env python3
"""Data-plane benchmark: our proxy side by side with nginx and the seed-style proxy.

One run starts, all on 127.0.0.1 and on free ports:

  direct      nginx as a fast backend, returning {"ok":true} (the floor)
  nginx       nginx as a reverse proxy in front of it (upstream keepalive, HTTP/1.1)
  seed-style  bench/seed_style_proxy.py: FastAPI + one shared httpx.AsyncClient (the baseline)
  ours        `python main.py` (uvicorn/uvloop/httptools, bare ASGI forwarder, proxy/upstream.py client)

and drives each with wrk (1 thread; 1 and 32 connections by default; a 1 s
warm-up before each measurement). It prints a table (requests/s, p50, p99), the
ratios ours/nginx and ours/seed-style at the largest connection count, and our
added p50 latency over the direct call at 1 connection, against the targets.

    python bench/bench_proxy.py [--duration 5] [--connections 1,32] [--rounds 1] [--json]

Needs nginx and wrk (Debian: `apt-get install -y nginx-light wrk`). Everything it
starts runs in its own process group and is stopped on exit, error or Ctrl-C;
each wrk run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA = BENCH_DIR / "wrk_report.lua"
BODY = b'{"ok":true}'
HOST = "127.0.0.1"

# Targets from the issue (reported, not enforced).
TARGET_VS_SEED = 15.0      # ours >= 15 x seed-style at 32 connections
TARGET_VS_NGINX = 0.12     # ours >= 12 % of nginx at 32 connections
TARGET_ADDED_P50_MS = 0.4  # ours' p50 - direct p50 at 1 connection


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes

@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    log_path: Path

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


@dataclass
class Processes:
    """Every process we start, each in its own process group; `stop_all` ends them all."""

    servers: list[Server] = field(default_factory=list)
    others: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log_path: Path, env: Optional[dict[str, str]] = None,
              cwd: Optional[Path] = None) -> Server:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env, cwd=cwd, preexec_fn=_pin_for(name))
        server = Server(name, proc, log_path)
        self.servers.append(server)
        return server

    @staticmethod
    def _stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # pgid == pid (start_new_session)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.others + [s.proc for s in reversed(self.servers)]:
            try:
                self._stop(proc)
            except Exception as exc:  # keep going: the others must stop too
                log(f"could not stop pid {proc.pid}: {exc}")


# --pin: CPU sets by role ("wrk", "backend", "proxy"); empty means no pinning (the default).
PINNING: dict[str, set[int]] = {}


def _pin_for(name: str) -> Optional[Any]:
    role = "backend" if name == "backend" else ("wrk" if name == "wrk" else "proxy")
    cpus = PINNING.get(role)
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def wait_ready(server: Server, url: str, timeout: float = 30.0, expect: Optional[bytes] = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = resp.read()
                if resp.status == 200 and (expect is None or body == expect):
                    return
                last = f"status {resp.status}, body {body[:100]!r}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready at {url} after {timeout:.0f}s ({last}):\n{server.tail()}")


# --------------------------------------------------------------------------- configs

def nginx_conf(tmp: Path, server_block: str, upstream_block: str = "") -> str:
    return textwrap.dedent(f"""\
        daemon off;
        master_process on;
        worker_processes 1;
        pid {tmp}/nginx.pid;
        error_log {tmp}/error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            client_body_temp_path {tmp}/body;
            proxy_temp_path {tmp}/proxy;
            fastcgi_temp_path {tmp}/fastcgi;
            uwsgi_temp_path {tmp}/uwsgi;
            scgi_temp_path {tmp}/scgi;
            keepalive_requests 10000000;
            keepalive_timeout 75s;
        """) + textwrap.indent(upstream_block + server_block, "    ") + "}\n"


def start_nginx(procs: Processes, nginx: str, tmp: Path, name: str, server_block: str,
                upstream_block: str = "") -> Server:
    prefix = tmp / name
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, server_block, upstream_block))
    # -e: the error log before the config is read (the default /var/log/nginx may not be writable).
    argv = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return procs.start(name, argv, prefix / "stdout.log")


# --------------------------------------------------------------------------- wrk

@dataclass
class Result:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    errors: int
    cpu_us_per_req: Optional[float] = None   # CPU (user+sys) of the target's processes per request
    sys_share: Optional[float] = None         # fraction of that CPU spent in the kernel

    def row(self) -> dict[str, Any]:
        return self.__dict__.copy()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by the processes of one process group (Linux /proc)."""
    user = system = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:          # fields[0] is the state; pgrp, ..., utime, stime
            user += int(fields[11]) / CLK_TCK
            system += int(fields[12]) / CLK_TCK
    return user, system


def run_wrk(wrk: str, url: str, connections: int, seconds: float) -> dict[str, Any]:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "--latency", "-s", str(LUA), url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, text=True, preexec_fn=_pin_for("wrk"))
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    raise RuntimeError(f"wrk gave no report (exit {proc.returncode}):\n{out}")


def measure(wrk: str, target: str, url: str, connections: int, duration: float, warmup: float,
            pgid: int) -> Result:
    if warmup > 0:
        run_wrk(wrk, url, connections, warmup)
    u0, s0 = group_cpu(pgid)
    rep = run_wrk(wrk, url, connections, duration)
    u1, s1 = group_cpu(pgid)
    lat = rep["latency_us"]
    errors = sum(rep["errors"].values())
    secs = rep["duration_us"] / 1e6
    cpu = (u1 - u0) + (s1 - s0)
    n = rep["requests"]
    return Result(target, connections, n / secs if secs else 0.0,
                  lat["p50"] / 1000, lat["p90"] / 1000, lat["p99"] / 1000, lat["mean"] / 1000,
                  n, errors, cpu / n * 1e6 if n else None, (s1 - s0) / cpu if cpu else None)


def median_result(results: list[Result]) -> Result:
    if len(results) == 1:
        return results[0]
    med = statistics.median
    r0 = results[0]
    cpu = [r.cpu_us_per_req for r in results if r.cpu_us_per_req is not None]
    sys_ = [r.sys_share for r in results if r.sys_share is not None]
    return Result(r0.target, r0.connections, med(r.rps for r in results), med(r.p50_ms for r in results),
                  med(r.p90_ms for r in results), med(r.p99_ms for r in results),
                  med(r.mean_ms for r in results), sum(r.requests for r in results),
                  sum(r.errors for r in results), med(cpu) if cpu else None, med(sys_) if sys_ else None)


# --------------------------------------------------------------------------- main

def versions(nginx: str, wrk: str) -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    try:
        out["orchestrator_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                                    capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        pass
    try:
        out["nginx"] = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10).stderr.strip()
    except Exception:
        pass
    try:
        first = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10).stdout.splitlines()
        out["wrk"] = first[0] if first else ""
    except Exception:
        pass
    from importlib import metadata
    for pkg in ("uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "fastapi"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Data-plane benchmark: ours vs nginx vs the seed-style proxy.")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each (default 1; 0: none)")
    p.add_argument("--connections", default="1,32", help="comma-separated wrk connection counts (default 1,32)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sweep N times and report medians (default 1)")
    p.add_argument("--targets", default="direct,nginx,seed-style,ours",
                   help="which targets to run (default all: direct,nginx,seed-style,ours; "
                        "also available: ours-accesslog)")
    p.add_argument("--access-log", action="store_true",
                   help="also run our proxy with --access-log (text lines to a file; all else as 'ours') as 'ours-accesslog'")
    p.add_argument("--pin", action="store_true",
                   help="pin the proxies to CPU 0 and wrk + the backend to CPU 1 (default: no pinning; "
                        "see docs/performance.md)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the table")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs and server logs)")
    args = p.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.access_log and "ours-accesslog" not in args.targets:
        args.targets.append("ours-accesslog")
    known = {"direct", "nginx", "seed-style", "ours", "ours-accesslog"}
    unknown = set(args.targets) - known
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; known: {sorted(known)}")
    if args.duration <= 0 or args.rounds < 1 or not args.connections or min(args.connections) < 1:
        p.error("--duration > 0, --rounds >= 1, --connections >= 1")
    return args


def find_tools() -> tuple[str, str]:
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    wrk = shutil.which("wrk")
    missing = [n for n, v in (("nginx", nginx), ("wrk", wrk)) if not v]
    if missing:
        sys.exit(f"error: {' and '.join(missing)} not found. On Debian/Ubuntu: "
                 f"sudo apt-get install -y nginx-light wrk")
    assert nginx and wrk
    return nginx, wrk


def start_all(procs: Processes, nginx: str, tmp: Path, targets: list[str]) -> dict[str, str]:
    """Start the backend and every proxy; return target name -> URL to drive."""
    path = "/orchestrator/bench/item"
    backend_port = free_port()
    backend = start_nginx(procs, nginx, tmp, "backend", textwrap.dedent(f"""\
        server {{
            listen {HOST}:{backend_port};
            location / {{
                default_type application/json;
                return 200 '{BODY.decode()}';
            }}
        }}
        """))
    wait_ready(backend, f"http://{HOST}:{backend_port}/base/health", expect=BODY)
    upstream_base = f"http://{HOST}:{backend_port}/base"
    urls = {"direct": f"{upstream_base}/item"}

    if "nginx" in targets:
        port = free_port()
        server = start_nginx(procs, nginx, tmp, "nginx-proxy", textwrap.dedent(f"""\
            server {{
                listen {HOST}:{port};
                location /orchestrator/bench/ {{
                    proxy_pass http://bench_backend/base/;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                }}
            }}
            """), upstream_block=textwrap.dedent(f"""\
            upstream bench_backend {{
                server {HOST}:{backend_port};
                keepalive 64;
                keepalive_requests 10000000;
            }}
            """))
        urls["nginx"] = f"http://{HOST}:{port}{path}"
        wait_ready(server, urls["nginx"], expect=BODY)

    if "seed-style" in targets:
        port = free_port()
        server = procs.start("seed-style", [sys.executable, str(BENCH_DIR / "seed_style_proxy.py"),
                                            "--upstream", f"bench={upstream_base}", "--port", str(port)],
                             tmp / "seed-style.log", cwd=tmp)
        urls["seed-style"] = f"http://{HOST}:{port}{path}"
        wait_ready(server, urls["seed-style"], expect=BODY)

    config = tmp / "orchestrator.yaml"
    config.write_text(textwrap.dedent(f"""\
        endpoints:
          - url: "{upstream_base}"
            name: "bench"
            methods: ["GET", "POST"]
            health_check_path: "/health"
            timeout: 30
        health_check: {{enabled: true, interval: 30}}
        circuit_breaker: {{failure_threshold: 5, reset_timeout: 60, half_open_max_calls: 3}}
        """))
    for target, extra in (("ours", ["--log-level", "warning"]),
                          ("ours-accesslog", ["--log-level", "warning", "--access-log"])):
        if target not in targets:
            continue
        port = free_port()
        server = procs.start(target, [sys.executable, str(REPO / "main.py"), "--config", str(config),
                                      "--host", HOST, "--port", str(port), *extra],
                             tmp / f"{target}.log", cwd=tmp)
        wait_ready(server, f"http://{HOST}:{port}/readyz")
        urls[target] = f"http://{HOST}:{port}{path}"
        wait_ready(server, urls[target], expect=BODY)
    return {t: urls[t] for t in targets if t in urls}


def _us(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def fmt_ratio(x: Optional[float], pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:.1f} %" if pct else f"{x:.1f}x"


def summarize(results: list[Result], connections: list[int]) -> dict[str, Any]:
    by = {(r.target, r.connections): r for r in results}
    high = 32 if 32 in connections else max(connections)
    ours = by.get(("ours", high))
    summary: dict[str, Any] = {"ratio_connections": high}

    def ratio(other: str) -> Optional[float]:
        o = by.get((other, high))
        return ours.rps / o.rps if ours and o and o.rps else None

    summary["ours_over_seed"] = ratio("seed-style")
    summary["ours_over_nginx"] = ratio("nginx")
    d1, o1 = by.get(("direct", 1)), by.get(("ours", 1))
    summary["ours_added_p50_ms_at_1"] = (o1.p50_ms - d1.p50_ms) if d1 and o1 else None
    n1 = by.get(("nginx", 1))
    summary["nginx_added_p50_ms_at_1"] = (n1.p50_ms - d1.p50_ms) if d1 and n1 else None
    s1 = by.get(("seed-style", 1))
    summary["seed_added_p50_ms_at_1"] = (s1.p50_ms - d1.p50_ms) if d1 and s1 else None
    a = by.get(("ours-accesslog", high))
    summary["accesslog_over_ours"] = a.rps / ours.rps if a and ours and ours.rps else None
    summary["targets"] = {
        "ours_over_seed": {"target": TARGET_VS_SEED, "met": _met(summary["ours_over_seed"], TARGET_VS_SEED)},
        "ours_over_nginx": {"target": TARGET_VS_NGINX, "met": _met(summary["ours_over_nginx"], TARGET_VS_NGINX)},
        "ours_added_p50_ms_at_1": {"target": TARGET_ADDED_P50_MS,
                                   "met": None if summary["ours_added_p50_ms_at_1"] is None
                                   else summary["ours_added_p50_ms_at_1"] <= TARGET_ADDED_P50_MS},
    }
    return summary


def _met(value: Optional[float], target: float) -> Optional[bool]:
    return None if value is None else value >= target


def print_table(results: list[Result], summary: dict[str, Any], meta: dict[str, Any]) -> None:
    print(f"# data-plane benchmark: {meta['cpus']} CPUs, wrk -t1, {meta['duration']:g} s per run "
          f"(+{meta['warmup']:g} s warm-up), {meta['rounds']} round(s), GET {meta['path']} -> {len(BODY)} B JSON, "
          f"pinning: {meta['pinning']}")
    print()
    head = (f"{'target':<16}{'conns':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
            f"{'cpu us/req':>12}{'sys %':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        sys_pct = "n/a" if r.sys_share is None else f"{r.sys_share * 100:.0f}"
        print(f"{r.target:<16}{r.connections:>6}{r.rps:>11.0f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.errors:>8}"
              f"{_us(r.cpu_us_per_req):>12}{sys_pct:>7}")
    print("(cpu us/req: CPU time of the target's own processes per request, user+system, the backend's excluded"
          " for proxies; sys %: the kernel's share of it)")
    print()
    c = summary["ratio_connections"]

    def mark(key: str) -> str:
        met = summary["targets"][key]["met"]
        return "" if met is None else ("  (target met)" if met else "  (target MISSED)")

    print(f"ours / seed-style at {c} conns : {fmt_ratio(summary['ours_over_seed'])}"
          f"   target >= {TARGET_VS_SEED:g}x{mark('ours_over_seed')}")
    print(f"ours / nginx      at {c} conns : {fmt_ratio(summary['ours_over_nginx'], pct=True)}"
          f"   target >= {TARGET_VS_NGINX * 100:g} %{mark('ours_over_nginx')}")
    added = summary["ours_added_p50_ms_at_1"]
    print(f"ours added p50 over direct at 1 conn: "
          f"{'n/a' if added is None else f'{added:.3f} ms'}   target <= {TARGET_ADDED_P50_MS:g} ms"
          f"{mark('ours_added_p50_ms_at_1')}")
    for key, label in (("nginx_added_p50_ms_at_1", "nginx"), ("seed_added_p50_ms_at_1", "seed-style")):
        if summary.get(key) is not None:
            print(f"  (for reference: {label} adds {summary[key]:.3f} ms p50 at 1 conn)")
    if summary.get("accesslog_over_ours") is not None:
        print(f"ours with --access-log / ours at {c} conns: {summary['accesslog_over_ours'] * 100:.0f} %")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    nginx, wrk = find_tools()
    if args.pin:
        if (os.cpu_count() or 1) < 2:
            sys.exit("error: --pin needs at least 2 CPUs")
        PINNING.update({"proxy": {0}, "wrk": {1}, "backend": {1}})
    # Stop cleanly on Ctrl-C (also when started in the background, where SIGINT is ignored) and on TERM/HUP.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    ok = False
    try:
        log(f"starting servers (temp dir {tmp})")
        urls = start_all(procs, nginx, tmp, ["direct", *[t for t in args.targets if t != "direct"]])
        targets = [t for t in args.targets if t in urls]
        server_of = {"direct": "backend", "nginx": "nginx-proxy"}
        pgids = {t: next(s.proc.pid for s in procs.servers if s.name == server_of.get(t, t)) for t in targets}
        per_run = args.duration + args.warmup
        total = per_run * len(targets) * len(args.connections) * args.rounds
        log(f"measuring {', '.join(targets)} at {args.connections} connections, "
            f"{args.rounds} round(s): about {total:.0f} s")
        raw: dict[tuple[str, int], list[Result]] = {}
        for rnd in range(args.rounds):
            for c in args.connections:
                for t in targets:
                    r = measure(wrk, t, urls[t], c, args.duration, args.warmup, pgids[t])
                    raw.setdefault((t, c), []).append(r)
                    log(f"round {rnd + 1}: {t:<15} c={c:<3} {r.rps:9.0f} req/s  p50 {r.p50_ms:.3f} ms  "
                        f"p99 {r.p99_ms:.3f} ms  errors {r.errors}  cpu {_us(r.cpu_us_per_req)} us/req")
        results = [median_result(raw[(t, c)]) for c in args.connections for t in targets]
        for s in procs.servers:
            if s.proc.poll() is not None:
                log(f"warning: {s.name} exited during the run ({s.proc.returncode}):\n{s.tail()}")
        summary = summarize(results, args.connections)
        meta = {"cpus": os.cpu_count(), "duration": args.duration, "warmup": args.warmup,
                "rounds": args.rounds, "path": "/orchestrator/bench/item", "wrk_threads": 1,
                "loadavg": os.getloadavg(), "versions": versions(nginx, wrk),
                "pinning": "proxies: CPU 0; wrk + backend: CPU 1" if args.pin else "none",
                "nginx_workers": 1}
        if args.json:
            json.dump({"meta": meta, "results": [r.row() for r in results], "summary": summary,
                       "runs": {f"{t}@{c}": [r.row() for r in rs] for (t, c), rs in raw.items()}},
                      sys.stdout, indent=2)
            print()
        else:
            print_table(results, summary, meta)
        ok = True
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except SystemExit:
        log("stopped by a signal; stopping everything")
        raise
    finally:
        procs.stop_all()
        if args.keep_tmp or not ok:
            log(f"server logs and configs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
