#!/usr/bin/env python3
"""The upstream client alone (proxy/upstream.py), this tree's against another commit's.

Both versions run in one process, against one in-process HTTP/1.1 server on
127.0.0.1 answering {"ok":true}, alternating A/B/B/A in rounds; each round
times N keep-alive GETs and reports the process CPU per request (client and
server together: the server's share is the same for both). An A/A pair (the
other commit against itself) shows how far apart two equal runs land on this
machine: a B/A ratio inside that band is no difference.

    python bench/bench_upstream.py [--against HEAD~1] [--rounds 20] [--requests 5000]

For a change to the hot path where the whole-proxy benchmark
(bench/bench_proxy.py) is too noisy to resolve a few per cent.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
RESPONSE = b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{"ok":true}'


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server(asyncio.Protocol):
    """Answers every request head it sees (keep-alive, no bodies)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def cpu_per_request(module: ModuleType, origin: str, n: int) -> float:
    pool = module.Pool()
    try:
        started = time.process_time()
        for _ in range(n):
            resp = await pool.request(origin, "GET", "/x", [(b"accept", b"*/*")], None, 0, pool.time() + 5)
            await resp.read()
            resp.release()
        return (time.process_time() - started) / n * 1e6
    finally:
        await pool.close()


async def compare(modules: dict[str, ModuleType], rounds: int, n: int) -> dict[str, list[float]]:
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0)
    origin = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        for module in modules.values():  # warm-up
            await cpu_per_request(module, origin, n // 2)
        results: dict[str, list[float]] = {name: [] for name in modules}
        names = list(modules)
        for i in range(rounds):
            for name in names if i % 2 == 0 else reversed(names):
                results[name].append(await cpu_per_request(modules[name], origin, n))
        return results
    finally:
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="HEAD", help="the commit to compare this tree with (default HEAD)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--requests", type=int, default=5000, help="per round and version")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "upstream_other.py"
        other.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", f"{args.against}:proxy/upstream.py"],
                                         check=True, capture_output=True).stdout)
        modules = {"this": load("upstream_this", REPO / "proxy" / "upstream.py"),
                   "other": load("upstream_other", other), "other2": load("upstream_other2", other)}
        results = asyncio.run(compare(modules, args.rounds, args.requests))
    med = {name: statistics.median(v) for name, v in results.items()}
    print(f"upstream client, CPU µs per request (median of {args.rounds} rounds x {args.requests}):")
    print(f"  this tree {med['this']:.2f}   {args.against} {med['other']:.2f}")
    print(f"  this / {args.against}: {med['this'] / med['other']:.3f}   "
          f"A/A ({args.against} / itself, the noise): {med['other2'] / med['other']:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
