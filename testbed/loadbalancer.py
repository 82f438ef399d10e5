"""HAProxy (Debian's package, tools/lb/install.sh) standing in for kube-proxy.

One frontend on 127.0.0.1 balances over a fixed set of server slots; a test
points a slot at a proxy replica and takes it in or out of rotation through
HAProxy's runtime API (its admin socket), the way kube-proxy follows the
Service's EndpointSlices: no reload, established connections untouched.

No retries (`retries 0`): kube-proxy's iptables rules do not retry either,
so a refused or reset connection to a leaving replica is a failed call the
caller sees.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Optional

from testbed.harness import free_port, stop, wait_for_port

SLOTS = 8

CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    retries 0

frontend callers
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""


def haproxy() -> Optional[str]:
    return shutil.which("haproxy")


class LoadBalancer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        self.slots: dict[str, Optional[str]] = {f"s{i}": None for i in range(SLOTS)}  # slot -> replica name
        self.proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LoadBalancer":
        binary = haproxy()
        if binary is None:
            raise RuntimeError("haproxy is not installed (tools/lb/install.sh installs it)")
        servers = "\n".join(f"    server {slot} 127.0.0.1:1 disabled" for slot in self.slots)
        config = self.workdir / "haproxy.cfg"
        config.write_text(CONFIG.format(socket=self.socket, port=self.port, servers=servers))
        log = open(self.workdir / "haproxy.log", "ab")
        self.proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def command(self, line: str) -> str:
        """One runtime-API command; HAProxy answers and closes the connection."""
        with self._lock, socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        answer = b"".join(chunks).decode().strip()
        if answer and not answer.startswith("IP changed") and "port changed" not in answer.lower() \
                and "no need to change" not in answer:
            raise RuntimeError(f"haproxy refused {line!r}: {answer}")
        return answer

    def add(self, replica: str, port: int) -> None:
        """Put a replica into rotation (it is Ready: the endpoint is published)."""
        slot = next(s for s, r in self.slots.items() if r is None)
        self.command(f"set server replicas/{slot} addr 127.0.0.1 port {port}")
        self.command(f"set server replicas/{slot} state ready")
        self.slots[slot] = replica

    def remove(self, replica: str) -> None:
        """Take a replica out of rotation; connections in progress are left alone."""
        slot = next(s for s, r in self.slots.items() if r == replica)
        self.command(f"set server replicas/{slot} state maint")
        self.slots[slot] = None

    def members(self) -> list[str]:
        return sorted(r for r in self.slots.values() if r is not None)
