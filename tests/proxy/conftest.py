"""Fixtures for the proxy tests: real processes on 127.0.0.1, free ports.

- `backend`: one controllable aiohttp backend (testbed/backend.py) for the session.
- `start_proxy(config)`: a factory that runs `python main.py --config FILE` with a
  generated config and waits for /readyz; every proxy it started is stopped at
  the end of the test.
- `module_proxy_factory`: the same, stopped at the end of the module.
- helpers (`config_yaml`, `endpoint`, `wait_until`, ...) are in testbed/harness.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from testbed.harness import Backend, ProxyFactory, start_backend, stop


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
