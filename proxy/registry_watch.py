"""Cluster mode: follow the compiled registry ConfigMap through a watch.

The watch runs in a thread (the official client blocks); each event hands the
ConfigMap to the event loop, which reads any further shards and swaps the
route table. A registry of one shard (all but the largest) is decoded in the
watch thread before the hand-over: the loop then only swaps, without a round
trip through the thread pool (on busy cores each hop waits for the GIL).
When the API server goes away the watch retries with backoff and the proxy
keeps serving its last good registry (static stability).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Optional

from kubernetes import client, watch

from orchestrator import kube
from orchestrator.core import contract
from orchestrator.core.registry import (Registry, RegistryNotReady, RouteMemo, UnknownFormat, decode_shards,
                                        shard_count)
from orchestrator.proxy.state import AppState

log = logging.getLogger(__name__)


class RegistryWatcher:
    def __init__(self, state: AppState, api: client.ApiClient, namespace: str, name: str,
                 watch_timeout: int = 60) -> None:
        self.state = state
        self.watch_timeout = watch_timeout
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.last_error: Optional[str] = None
        self.last_event_at: Optional[float] = None
        self.connected = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._latest: Any = None  # the newest ConfigMap seen; loads always read this one
        self._latest_at = 0.0  # when it arrived (the state's clock): the log says how long loading took
        self._latest_decoded: Optional[Registry] = None  # _latest, decoded by the watch thread
        self._memo = RouteMemo()  # the watch thread's: unchanged routes are not built again
        self._load_lock = asyncio.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._watch_forever, name="registry-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        for task in list(self._tasks):
            task.cancel()

    async def refresh(self) -> None:
        """Read the registry now (the `/router/refresh` button)."""
        self._latest = await asyncio.to_thread(self.core.read_namespaced_config_map, self.name, self.namespace)
        self._latest_at = self.state.clock()
        self._latest_decoded = None
        await self._load()

    # -- the watch thread -------------------------------------------------------
    def _watch_forever(self) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                stream = watch.Watch().stream(
                    self.core.list_namespaced_config_map, self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    timeout_seconds=self.watch_timeout,  # server side: end the watch and start a fresh one
                    _request_timeout=(5, self.watch_timeout + 30),  # client side: a silent connection is dropped
                )
                self.connected = True
                for event in stream:
                    backoff = 0.2
                    if self._stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._hand_over(event["object"])
            except Exception as exc:  # the API server is away: keep serving, retry
                self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("registry watch interrupted (%s); retrying in %.1fs", self.last_error, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _hand_over(self, configmap: Any) -> None:
        assert self._loop is not None
        arrived = self.state.clock()
        self._loop.call_soon_threadsafe(self._schedule, configmap, arrived, self._decode_here(configmap))

    def _decode_here(self, configmap: Any) -> Optional[Registry]:
        """A new one-shard registry, decoded (it needs no API call); None when it is not
        that simple, or does not decode: `_load` reads it the usual way and says why."""
        data = configmap.data or {}
        try:
            if shard_count(data) != 1 or data.get("revision") == self.state.registry.revision:
                return None
            return decode_shards([data.get(contract.REGISTRY_KEY, "")], self._memo)
        except Exception:
            return None

    # -- on the event loop ------------------------------------------------------
    def _schedule(self, configmap: Any, arrived: float, decoded: Optional[Registry]) -> None:
        self._latest = configmap
        self._latest_at = arrived
        self._latest_decoded = decoded
        self.last_event_at = time.time()
        task = asyncio.create_task(self._load())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self) -> None:
        async with self._load_lock:
            for attempt in range(20):
                head, arrived, decoded = self._latest, self._latest_at, self._latest_decoded
                revision = (head.data or {}).get("revision") if head is not None else None
                if head is None or revision == self.state.registry.revision and self.state.ready:
                    if head is not None:
                        self.state.registry_refused(None)  # what is served is current again
                    return
                try:
                    registry = decoded if decoded is not None else await asyncio.to_thread(
                        kube.read_registry, self.core, self.namespace, self.name, head)
                except UnknownFormat as exc:
                    # A newer operator's registry (mixed releases during an upgrade): keep
                    # serving the last good one and stay Ready; the next change retries.
                    if self.state.registry_problem != str(exc):
                        log.warning("registry revision %s not loaded: %s (serving revision %s)", revision, exc,
                                    self.state.registry.revision or "(none)")
                    self.last_error = str(exc)
                    self.state.registry_refused(str(exc))
                    return
                except RegistryNotReady as exc:
                    # Shards mid-write: the operator writes the head last, so a retry settles it.
                    self.last_error = str(exc)
                    await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
                    continue
                except Exception as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("could not read the registry (%s); keeping revision %s",
                                self.last_error, self.state.registry.revision or "(none)")
                    await asyncio.sleep(1.0)
                    continue
                if head is self._latest or registry.revision != self.state.registry.revision:
                    self.state.apply_registry(registry, arrived)
                    self.last_error = None
                if head is self._latest:
                    return
