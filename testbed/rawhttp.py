"""Raw HTTP/1.1 over real sockets, judged by a strict reference parser (h11).

- `StrictBackend`: a threaded server on 127.0.0.1 that parses every byte the
  proxy sends with h11 (which refuses anything ambiguous) and records each
  request; a parse error is recorded too, so a test can assert that nothing
  but well-formed, whole requests ever reached a backend. Its answers come
  from a `responder`: the default echoes the request as JSON; tests that play
  a hostile backend write raw bytes instead.
- `exchange`: send raw bytes as a caller and read the answers back with h11.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import h11


@dataclass
class Seen:
    """One request as the backend parsed it."""

    conn: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    sock: Optional[socket.socket] = field(default=None, repr=False, compare=False)

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


# A responder gets the parsed request and returns the raw bytes to answer with,
# and whether to keep the connection open afterwards.
Responder = Callable[[Seen], tuple[bytes, bool]]


def echo(seen: Seen) -> tuple[bytes, bool]:
    body = json.dumps({"method": seen.method, "target": seen.target, "body": seen.body.decode("latin-1"),
                       "token": seen.header("x-token")}).encode()
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body), True


@dataclass
class StrictBackend:
    responder: Responder = echo
    seen: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.errors.clear()

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)
        sock.settimeout(30)
        try:
            while True:
                message = read_message(conn, sock)  # a close mid-request raises RemoteProtocolError
                if message is None:
                    return
                request, body = message
                assert isinstance(request, h11.Request)
                seen = Seen(number, request.method.decode(), request.target.decode("latin-1"),
                            [(k.decode().lower(), v.decode("latin-1")) for k, v in request.headers], body, sock)
                with self._lock:
                    self.seen.append(seen)
                answer, keep = self.responder(seen)
                sock.sendall(answer)
                if not keep:
                    return
                # The answer was raw bytes: tell h11 a response went out so it
                # accepts the next request on this connection.
                try:
                    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return  # the request said Connection: close
        except h11.RemoteProtocolError as exc:
            self._error(f"conn {number}: the proxy sent invalid HTTP: {exc}")
        except OSError:
            return
        finally:
            sock.close()

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)


class Hostile:
    """A backend whose raw answer each test chooses (`answer`, and whether to `keep` the connection)."""

    def __init__(self) -> None:
        self.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        self.keep = True
        self.backend = StrictBackend(self.respond)

    def respond(self, seen: Seen) -> tuple[bytes, bool]:
        return self.answer, self.keep


def read_message(conn: h11.Connection, sock: socket.socket) -> Optional[tuple[Union[h11.Request, h11.Response], bytes]]:
    """The next whole message h11 parses off `sock` (interim 1xx skipped): its head
    and body; None once the peer closed between messages."""
    head: Optional[Union[h11.Request, h11.Response]] = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))  # b"" tells h11 the peer closed
        elif isinstance(event, (h11.Request, h11.Response)):
            head = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, body
        elif isinstance(event, h11.ConnectionClosed):
            return None


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        values = self.headers.get(name)
        return values[0] if values else None

    def json(self) -> dict:
        return json.loads(self.body)


def exchange(port: int, data: bytes, expect: int = 1, timeout: float = 10.0) -> tuple[list[Answer], bool]:
    """Send `data` on one fresh connection; read up to `expect` answers.

    Returns the answers, strictly parsed, and whether the proxy closed the
    connection after them. Raises on anything h11 will not accept.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h11.Connection(h11.CLIENT)
    answers: list[Answer] = []
    closed = False
    try:
        sock.sendall(data)
        # h11 only parses responses to requests it has seen sent: describe them.
        for _ in range(expect):
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
            message = read_message(conn, sock)
            if message is None:
                return answers, True
            response, body = message
            assert isinstance(response, h11.Response)
            headers: dict[str, list[str]] = {}
            for k, v in response.headers:
                headers.setdefault(k.decode().lower(), []).append(v.decode("latin-1"))
            answers.append(Answer(response.status_code, headers, body))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
        if not closed:
            sock.settimeout(0.5)
            try:
                closed = sock.recv(1) == b""
            except socket.timeout:
                closed = False
            except ConnectionResetError:
                closed = True
        return answers, closed
    finally:
        sock.close()
