"""Steady keep-alive callers for rollout tests: GETs and POSTs with unique ids.

Each caller thread holds one httpx.Client (one kept-alive connection to the
load balancer) and alternates GET and POST until told to stop. Every POST
carries a unique `x-call-id`; the backend (testbed/backend.py) counts
the ids it received, so a test can tell lost and duplicated POSTs apart from
failed calls.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

import httpx


@dataclass
class Tally:
    calls: int = 0
    gets: int = 0
    posts: int = 0
    failures: list[str] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)  # ids of POSTs answered 200


@dataclass
class Figures:
    calls: int
    gets: int
    posts: int
    failures: list[str]
    lost: list[str]  # answered 200 but never reached the backend
    duplicated: list[str]  # reached the backend more than once
    unanswered_arrived: int  # POSTs whose call failed but which did reach the backend

    def line(self) -> str:
        return (f"calls={self.calls} (GET {self.gets}, POST {self.posts}) failures={len(self.failures)} "
                f"lost={len(self.lost)} duplicated={len(self.duplicated)}")


class Callers:
    def __init__(self, url: str, path: str, callers: int = 4, pause: float = 0.01) -> None:
        self.url = url
        self.path = path
        self.count = callers
        self.pause = pause  # between calls of one caller: steady traffic, not a benchmark
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._tallies: list[Tally] = []
        self._sent: list[list[str]] = []

    def start(self) -> "Callers":
        for i in range(self.count):
            tally, sent = Tally(), []
            self._tallies.append(tally)
            self._sent.append(sent)
            thread = threading.Thread(target=self._run, args=(i, tally, sent), name=f"caller-{i}", daemon=True)
            self._threads.append(thread)
            thread.start()
        return self

    def calls(self) -> int:
        return sum(t.calls for t in self._tallies)

    def wait_calls(self, more: int, timeout: float = 60.0) -> None:
        """Block until the callers made `more` further calls (traffic is flowing)."""
        target = self.calls() + more
        deadline = time.monotonic() + timeout
        while self.calls() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"callers stalled at {self.calls()} calls")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def figures(self, arrived: dict[str, int]) -> Figures:
        """`arrived`: the backend's count per call id (GET /_control/calls)."""
        tallies = self._tallies
        posted = {i for t in tallies for i in t.posted}
        sent = {i for s in self._sent for i in s}
        return Figures(
            calls=sum(t.calls for t in tallies), gets=sum(t.gets for t in tallies), posts=sum(t.posts for t in tallies),
            failures=[f for t in tallies for f in t.failures],
            lost=sorted(i for i in posted if i not in arrived),
            duplicated=sorted(i for i in sent if arrived.get(i, 0) > 1),
            unanswered_arrived=sum(1 for i in sent - posted if i in arrived),
        )

    def _run(self, index: int, tally: Tally, sent: list[str]) -> None:
        client = httpx.Client(base_url=self.url, timeout=30)
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                if n % 2:
                    self._call(client, tally, "GET", f"{self.path}/get/{index}/{n}", None)
                    tally.gets += 1
                else:
                    call_id = uuid.uuid4().hex
                    sent.append(call_id)
                    if self._call(client, tally, "POST", f"{self.path}/post/{index}/{n}", call_id):
                        tally.posted.append(call_id)
                    tally.posts += 1
                tally.calls += 1
                self._stop.wait(self.pause)
        finally:
            client.close()

    @staticmethod
    def _call(client: httpx.Client, tally: Tally, method: str, path: str, call_id: Optional[str]) -> bool:
        headers = {"x-call-id": call_id} if call_id else {}
        try:
            response = client.request(method, path, headers=headers, content=b"payload" if call_id else None)
        except httpx.HTTPError as exc:
            tally.failures.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            return False
        if response.status_code != 200:
            tally.failures.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
            return False
        return True
