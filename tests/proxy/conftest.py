"""Fixtures for the proxy tests: real processes on 127.0.0.1, free ports.

- `backend`: one controllable aiohttp backend (testbed/backend.py) for the session.
- `start_proxy(config)`: a factory that runs `python main.py --config FILE` with a
  generated config and waits for /readyz; every proxy it started is stopped at
  the end of the test.
- `module_proxy_factory`: the same, stopped at the end of the module.
- `strict`, `hostile` (per module): raw backends judged by h11 (testbed/rawhttp.py).
- helpers (`config_yaml`, `endpoint`, `wait_until`, ...) are in testbed/harness.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from testbed.harness import Backend, ProxyFactory, start_backend, stop
from testbed.rawhttp import Hostile, StrictBackend


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    b = start_backend()
    yield b
    stop(b.proc)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_proxy_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path_factory.mktemp("proxy"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def strict() -> Iterator[StrictBackend]:
    """A backend that parses every byte with h11 and echoes each request (testbed/rawhttp.py)."""
    b = StrictBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    """A backend whose raw answer the test chooses."""
    h = Hostile()
    yield h
    h.backend.close()
