"""Fixtures for tests against a real Kubernetes control plane.

`control_plane` (session scope) builds the binaries if tools/controlplane
changed (cached; a cold build takes many minutes, see docs/control-plane.md),
starts etcd + kube-apiserver (+ kube-controller-manager) once per test run,
and stops them at the end -- also on failure or Ctrl-C (finally + atexit),
and even if pytest is SIGKILLed (cluster.sh's owner-PID watchdog).

Every test under tests/cluster/ carries the `cluster` marker: deselect them
with `pytest -m "not cluster"`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from testbed.controlplane import ControlPlane

from testbed.harness import Backend, start_backend, stop

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs the real etcd + kube-apiserver control plane (tests/cluster)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items; mark only ours.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane() -> ControlPlane:
    """The running control plane; see testbed/controlplane.py for the API.

    Set CONTROLPLANE_KEEP_DIR=1 to keep its logs/certs (.cluster/cp-*) after
    the run for debugging.
    """
    cp = ControlPlane(keep_dir=os.environ.get("CONTROLPLANE_KEEP_DIR") == "1")
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    """One controllable backend per module (modules that want one per test define their own)."""
    b = start_backend()
    yield b
    stop(b.proc)
