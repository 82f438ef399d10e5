"""A controllable backend for the proxy tests: `python backend.py PORT`.

Runs as its own process (aiohttp), so the proxy under test talks to it over a
real socket. Every path may carry any prefix before the behaviour segment
(`/api/status/500` behaves like `/status/500`), so one backend serves routes
with different base paths.

    /status/{code}          answer {code} with a JSON body and x-backend: yes
    /slow/{seconds}         sleep, then echo
    /download/{bytes}       stream that many bytes (?chunked=1: no Content-Length)
    /drip/{seconds}         a chunked stream of 10 lines, one every seconds/10 (a long stream)
    /upload                 read the body as a stream, answer {"received": n}
    /hop                    a response carrying hop-by-hop headers
    /health[/{key}]         200, or what /_control/health?key=&status= set
    anything else           echo: method, path, raw path, query, headers, body length
    /_control/health        ?key=K&status=N: set the health answer of K
    /_control/stats         ?prefix=P: {"hits": n} requests whose path starts with P
                            (control requests excluded; health probes counted under /health)
    /_control/connections   ?prefix=P: {"connections": n} distinct client connections (peer
                            address and port) that carried requests whose path starts with P
    /_control/calls         {"ids": {id: times}}: every request that carried an `x-call-id`
                            header, counted per id (a rollout test's lost and duplicated POSTs)
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from aiohttp import web

hits: Counter[str] = Counter()
peers: set[tuple[str, str]] = set()  # (client "ip:port", raw path): connections per path
health_status: dict[str, int] = {}
call_ids: Counter[str] = Counter()
CHUNK = b"x" * (256 * 1024)


def behaviour(path: str) -> tuple[str, list[str]]:
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if part in ("status", "slow", "download", "drip", "upload", "hop", "health"):
            return part, parts[i + 1:]
    return "echo", parts


async def echo(request: web.Request, body_length: int | None = None) -> web.Response:
    if body_length is None:
        body_length = 0
        async for chunk in request.content.iter_any():
            body_length += len(chunk)
    return web.json_response({
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "query": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_length": body_length,
    })


async def handle(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path.startswith("/_control/"):
        return await control(request)
    kind, args = behaviour(path)
    hits[request.raw_path] += 1
    call_id = request.headers.get("x-call-id")
    if call_id is not None:
        call_ids[call_id] += 1
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    if peer:
        peers.add((f"{peer[0]}:{peer[1]}", request.raw_path))
    if kind == "status":
        code = int(args[0])
        return web.json_response({"backend_status": code, "detail": "from the backend"}, status=code,
                                 headers={"x-backend": "yes"})
    if kind == "slow":
        await asyncio.sleep(float(args[0]))
        return await echo(request)
    if kind == "download":
        total = int(args[0])
        resp = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        if request.query.get("chunked") != "1":
            resp.content_length = total
        await resp.prepare(request)
        sent = 0
        while sent < total:
            piece = CHUNK[: min(len(CHUNK), total - sent)]
            await resp.write(piece)
            sent += len(piece)
        await resp.write_eof()
        return resp
    if kind == "drip":
        resp = web.StreamResponse(headers={"content-type": "text/plain"})
        await resp.prepare(request)
        for i in range(10):
            await resp.write(b"line %d\n" % i)
            await asyncio.sleep(float(args[0]) / 10)
        await resp.write_eof()
        return resp
    if kind == "upload":
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.json_response({"received": received})
    if kind == "hop":
        return web.Response(text="hop", headers={
            "Connection": "keep-alive, X-Internal", "X-Internal": "secret", "Keep-Alive": "timeout=5",
            "X-End-To-End": "kept", "Set-Cookie": "a=1"})
    if kind == "health":
        key = args[0] if args else "default"
        code = health_status.get(key, 200)
        return web.json_response({"status": "ok" if code < 400 else "failing"}, status=code)
    return await echo(request)


async def control(request: web.Request) -> web.Response:
    if request.path == "/_control/health":
        health_status[request.query.get("key", "default")] = int(request.query["status"])
        return web.json_response({"ok": True})
    if request.path == "/_control/stats":
        prefix = request.query.get("prefix", "")
        return web.json_response({"hits": sum(n for p, n in hits.items() if p.startswith(prefix))})
    if request.path == "/_control/connections":
        prefix = request.query.get("prefix", "")
        return web.json_response({"connections": len({p for p, path in peers if path.startswith(prefix)})})
    if request.path == "/_control/calls":
        return web.json_response({"ids": dict(call_ids)})
    return web.json_response({"error": "unknown control"}, status=404)


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application(client_max_size=1024 ** 4)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                handler_cancellation=True)


if __name__ == "__main__":
    main()
