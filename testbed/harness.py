"""Helpers for the proxy tests: real processes on 127.0.0.1, free ports.

The fixtures built on these live in conftest.py; test modules import the
plain helpers from here (`from testbed.harness import ...`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"
BACKEND = Path(__file__).with_name("backend.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def stop(proc: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> None:
    """End a process the test started."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# -- backend --------------------------------------------------------------------

@dataclass
class Backend:
    port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_health(self, key: str, status: int) -> None:
        httpx.get(f"{self.url}/_control/health", params={"key": key, "status": status}).raise_for_status()

    def hits(self, prefix: str) -> int:
        return httpx.get(f"{self.url}/_control/stats", params={"prefix": prefix}).json()["hits"]


def start_backend() -> Backend:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BACKEND), str(port)])
    wait_for_port(port, proc)
    return Backend(port, proc)




# -- config -----------------------------------------------------------------------

def endpoint(name: str, url: str, **fields: Any) -> dict[str, Any]:
    entry = {"url": url, "name": name, "methods": ["GET", "POST", "PUT", "DELETE", "PATCH"], "timeout": 5}
    entry.update(fields)
    return entry


def config_yaml(endpoints: list[dict[str, Any]], breaker: Optional[dict] = None, health: Optional[dict] = None,
                **top: Any) -> str:
    doc = {
        "endpoints": endpoints,
        "circuit_breaker": {"failure_threshold": 3, "reset_timeout": 1.0, "half_open_max_calls": 1,
                            **(breaker or {})},
        "health_check": {"enabled": True, "interval": 0.3, "timeout": 0.5, "unhealthy_threshold": 2,
                         "healthy_threshold": 1, **(health or {})},
        "log_level": "WARNING",
        **top,
    }
    return yaml.safe_dump(doc, sort_keys=False)


# -- proxy --------------------------------------------------------------------------

@dataclass
class Proxy:
    proc: subprocess.Popen
    port: int
    config_path: Path
    workdir: Path
    clients: list[httpx.Client] = field(default_factory=list)
    output: list[bytes] = field(default_factory=list)

    def log(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **kw: Any) -> httpx.Client:
        c = httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 10.0), **kw)
        self.clients.append(c)
        return c

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def write_config(self, text: str) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)  # atomic: a reload never reads half a file

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        stop_proxy(self.proc)


def launch(workdir: Path, config: Optional[str], args: tuple[str, ...] = (), env: Optional[dict] = None,
           config_name: str = "config/config.yaml") -> tuple[subprocess.Popen, int, Path]:
    """Start `python main.py` in `workdir` (not waiting for it)."""
    port = free_port()
    config_path = workdir / config_name
    if config is not None:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config)
    full_env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "CONFIG_PATH", "LOG_LEVEL", "RELOAD")}
    full_env.update(env or {})
    cmd = [sys.executable, str(MAIN), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *args]
    proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, port, config_path


def stop_proxy(proc: subprocess.Popen) -> None:
    """End a proxy without its SIGTERM drain period (SIGINT skips it), so a test
    does not wait --drain-seconds per proxy; tests/proxy/test_drain.py sends SIGTERM."""
    stop(proc, signal.SIGINT)


def drain(proc: subprocess.Popen) -> list[bytes]:
    """Collect the process's output in a thread, so a chatty proxy never blocks on a full pipe."""
    lines: list[bytes] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_ready(url: str, proc: subprocess.Popen, output: list[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            time.sleep(0.1)
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{b''.join(output).decode()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"proxy at {url} not ready after {timeout}s")


def run_proxy(workdir: Path, config: str, args: tuple[str, ...] = (), env: Optional[dict] = None) -> Proxy:
    """Launch a proxy and wait until it is ready. A free port can be taken by someone
    else between free_port() and the bind (the machine is shared): then a new port."""
    for attempt in range(3):
        proc, port, path = launch(workdir, config, args, env)
        proxy = Proxy(proc, port, path, workdir)
        proxy.output = drain(proc)
        try:
            wait_ready(proxy.url, proc, proxy.output)
            return proxy
        except BaseException:
            proxy.stop()
            if attempt < 2 and b"address already in use" in b"".join(proxy.output):
                continue
            raise
    raise AssertionError("unreachable")


class ProxyFactory:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proxy] = []

    def __call__(self, config: str, args: tuple[str, ...] = ()) -> Proxy:
        workdir = self.tmp / f"proxy{len(self.started)}"
        workdir.mkdir(parents=True)
        proxy = run_proxy(workdir, config, args)
        self.started.append(proxy)
        return proxy

    def stop_all(self) -> None:
        for p in self.started:
            p.stop()




def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout}s (last: {last!r})")


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]
