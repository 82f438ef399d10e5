"""Fixtures for the image tier: the project's image, built by tools/image from
Debian's packages, run with podman.

Every test here carries the `image` marker (`pytest -m "not image"` leaves
them out). They are skipped -- loudly, with the reason in the summary -- only
when this machine cannot run a container at all (no podman: tools/image/install.sh
installs it as root; or the runtime refuses to start one); a failing build
is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from testbed.podman import Podman, have_podman

HERE = Path(__file__).resolve().parent

IMAGE = "localhost/orchestrator:test"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image: builds and runs the container image (tests/image; needs podman)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.image)


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    if not have_podman():
        if os.environ.get("CI") == "true":  # CI's machine can: not running the tier there is a failure
            pytest.fail("podman is not installed: tools/test.sh installs it (tools/image/install.sh)")
        pytest.skip("IMAGE TIER NOT RUN: podman is not installed (tools/image/install.sh installs it, as root)")
    engine = Podman()
    try:
        yield engine
    finally:
        engine.remove_all()


@pytest.fixture(scope="session")
def image(podman: Podman) -> str:
    """The image built from the Dockerfile (cached layers make a rebuild cheap)."""
    ref = podman.build(IMAGE)
    probe = podman("run", "--rm", "--network", "host", "--entrypoint", "true", ref, check=False)
    if probe.returncode != 0:
        pytest.skip(f"IMAGE TIER NOT RUN: this machine cannot run containers: {probe.stderr.strip()}")
    return ref


@pytest.fixture
def containers(podman: Podman) -> Iterator[Podman]:
    """The podman wrapper; containers a test starts are removed after it."""
    yield podman
    podman.remove_all()
