"""The access log of proxied calls: one line per call, written after its last byte.

Off by default (`--access-log`); when on it is written whatever `--log-level`
says. Each line carries the client, method, path (no query string), status,
time to the response head (the backend's answer, or the gateway's own
refusal), total time, body bytes sent and the request id; with
`--log-format json` these are JSON fields of their own, in the same shape as
every other log line (orchestrator/logs.py).

It bypasses the `logging` module on purpose: a LogRecord, its formatting and a
write per call cost more than the proxying itself (docs/performance.md,
"--access-log"). Lines are built directly and handed over in batches, one
every `flush_seconds`, so the cost per call is a string format and a list
append. The writes happen in a thread of their own: a log reader that stops
reading (a full pipe to the container runtime) must not stop the event loop
and with it every call. Past `BACKLOG_BYTES` waiting to be written, lines are
dropped and counted, and the count is written once the reader catches up.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import deque
from typing import Any, Optional, TextIO

from orchestrator.proxy.forwarder import PREFIX

Scope = dict[str, Any]
LOGGER = __name__
BACKLOG_BYTES = 8 * 1024 * 1024


class BackgroundWriter:
    """Writes text to a stream from a daemon thread; `put` never blocks."""

    def __init__(self, stream: Optional[TextIO], limit: int = BACKLOG_BYTES) -> None:
        self.stream = stream  # None: sys.stderr as it is at write time
        self.limit = limit
        self.dropped = 0  # lines
        self._waiting: deque[str] = deque()
        self._bytes = 0
        self._lock = threading.Condition()
        self._busy = False
        self._thread: Optional[threading.Thread] = None

    def put(self, text: str) -> None:
        with self._lock:
            if self._bytes + len(text) > self.limit:
                self.dropped += text.count("\n")
                return
            self._waiting.append(text)
            self._bytes += len(text)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
                self._thread.start()
            self._lock.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Until everything handed over is written (at shutdown); False if the stream would not take it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._lock.wait()
                text = "".join(self._waiting)
                self._waiting.clear()
                self._bytes = 0
                dropped, self.dropped = self.dropped, 0
                self._busy = True
            if dropped:
                text += (f"access log: {dropped} line(s) dropped: the log's reader fell more than "
                         f"{self.limit // (1024 * 1024)} MiB behind\n")
            stream = self.stream or sys.stderr
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # a closed stream: nothing to tell it
                pass
            with self._lock:
                self._busy = False
                self._lock.notify_all()


class _Clock:
    """Wall-clock stamps in the log formats, the strftime done once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = self._iso = ""

    def stamps(self, now: float) -> tuple[str, str]:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ms = int((now - second) * 1000)
        return f"{self._text},{ms:03d}", f"{self._iso}.{ms:03d}Z"


class AccessLogged:
    """Wraps an ASGI app (the forwarder); the wrapper exists only when the access log is on."""

    def __init__(self, app: Any, fmt: str = "text", stream: Optional[TextIO] = None,
                 flush_seconds: float = 0.2) -> None:
        self.app = app
        self.json = fmt == "json"
        self.writer = BackgroundWriter(stream)
        self.flush_seconds = flush_seconds
        self._pending: list[str] = []
        self._flush_at: Optional[asyncio.TimerHandle] = None
        self._clock = _Clock()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        head_at = 0.0
        status = 0
        sent = 0
        request_id = ""

        async def observed(message: dict[str, Any]) -> None:
            nonlocal head_at, status, sent, request_id
            if message["type"] == "http.response.start":
                head_at = time.perf_counter()
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        request_id = value.decode("latin-1")
            else:
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            done = time.perf_counter()
            self._record(scope, status or 499, (head_at - started) * 1000 if head_at else None,
                         (done - started) * 1000, sent, request_id)

    def _record(self, scope: Scope, status: int, upstream_ms: Optional[float], duration_ms: float, sent: int,
                request_id: str) -> None:
        path: str = scope["path"]
        route = path[len(PREFIX):].partition("/")[0] if path.startswith(PREFIX) else ""
        client = scope.get("client")
        address = client[0] if client else "-"
        method: str = scope["method"]
        text_time, iso_time = self._clock.stamps(time.time())
        if self.json:
            line = json.dumps({
                "timestamp": iso_time, "level": "info", "logger": LOGGER,
                "message": f"{method} {path} {status}", "request_id": request_id, "route": route,
                "method": method, "path": path, "status": status,
                "upstream_ms": None if upstream_ms is None else round(upstream_ms, 3),
                "duration_ms": round(duration_ms, 3), "bytes": sent, "client": address,
            }, ensure_ascii=False)
        else:
            upstream = "-" if upstream_ms is None else f"{upstream_ms:.3f}"
            line = (f"{text_time} INFO {LOGGER}: {address} {method} {path} {status} route={route} "
                    f"upstream_ms={upstream} duration_ms={duration_ms:.3f} bytes={sent} id={request_id}")
        self._pending.append(line + "\n")
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self.flush_seconds, self.flush)

    def flush(self) -> None:
        """Hand what is pending to the writer thread."""
        self._flush_at = None
        if self._pending:
            lines, self._pending = self._pending, []
            self.writer.put("".join(lines))

    def close(self, timeout: float = 2.0) -> None:
        """At shutdown: hand over the rest and give the writer a moment to finish."""
        self.flush()
        self.writer.wait_idle(timeout)
