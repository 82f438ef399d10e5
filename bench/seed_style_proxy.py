"""Baseline for bench/bench_proxy.py: the proxy as the original (seed) service did it.

A plain FastAPI app with one route, `/orchestrator/{name}/{path:path}`, that
forwards with one shared `httpx.AsyncClient` and buffers the whole response.
No circuit breaker, no metrics, no streaming: it is deliberately simple, and is
kept here only so the benchmark has a fixed "before" to compare against.

    python bench/seed_style_proxy.py --upstream bench=http://127.0.0.1:8081/base --port 8082
"""

from __future__ import annotations

import argparse
import contextlib
from typing import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "proxy-authenticate", "proxy-authorization", "host", "content-length"}

UPSTREAMS: dict[str, str] = {}
client: httpx.AsyncClient | None = None


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    global client
    client = httpx.AsyncClient(timeout=30.0)
    try:
        yield
    finally:
        await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.api_route("/orchestrator/{name}/{path:path}",
               methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def forward(name: str, path: str, request: Request) -> Response:
    base = UPSTREAMS.get(name)
    if base is None:
        return JSONResponse({"detail": f"unknown endpoint {name!r}"}, status_code=404)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    assert client is not None
    upstream = await client.request(
        request.method, f"{base}/{path}", params=request.query_params, headers=headers,
        content=await request.body(),
    )
    out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
    return Response(content=upstream.content, status_code=upstream.status_code, headers=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", action="append", required=True, metavar="NAME=URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    for item in args.upstream:
        name, _, url = item.partition("=")
        UPSTREAMS[name] = url.rstrip("/")
    # uvicorn's defaults (loop/http "auto" pick uvloop/httptools when installed),
    # access log off so that it is compared on the same footing as ours.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
