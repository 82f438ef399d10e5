"""The container image: sizes, container start-to-ready, and token rotation.

    python bench/bench_image.py [--restarts 3]

Builds the image with tools/image/build.sh (podman, Debian base), then
reports:
- the image size, the base's, and the application layer's (the virtualenv
  the Dockerfile copies onto the base), from `podman image inspect/history`;
- container start to ready: the runtime's StartedAt to the first 200 of the
  probe the chart declares (proxy: readinessProbe /readyz, i.e. the registry
  is loaded; operator: livenessProbe /healthz). First the operator and 3
  proxies started together (testbed/incluster.py: the chart installed,
  kubelet-style identity), then each container restarted alone `--restarts`
  times (median);
- rotation: a new bound token written into every container's mounted file,
  the Pods the old tokens were bound to deleted, then the time from applying
  a new Endpoint to it answering 200 on all 3 proxies.

Not a pass/fail test; prints `uptime` first (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testbed/, the shared harness (kept out of the product's wheel)

import httpx  # noqa: E402

from testbed.controlplane import ControlPlane  # noqa: E402
from testbed.incluster import NAMESPACE, InCluster  # noqa: E402
from testbed.podman import Podman  # noqa: E402
from testbed.stack import endpoint_manifest  # noqa: E402
from testbed.harness import start_backend, stop, wait_until  # noqa: E402

IMAGE = "localhost/orchestrator:bench"


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def sizes(podman: Podman, image: str) -> None:
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    history = json.loads(podman("history", "--format", "json", image).stdout)
    base = next(h for h in history if "ADD file:" in (h.get("CreatedBy") or h.get("createdBy") or ""))
    app = next(h for h in history if "COPY dir:" in (h.get("CreatedBy") or h.get("createdBy") or ""))
    print(f"image {image}: {mb(info['Size'])} (uncompressed)")
    print(f"  base layer (Debian bookworm minbase + python3.11): {mb(base.get('size', base.get('Size', 0)))}")
    print(f"  application layer (/opt/venv): {mb(app.get('size', app.get('Size', 0)))}")
    saved = subprocess.run(["bash", "-c", f"podman save {image} | gzip -c | wc -c"], capture_output=True,
                           text=True, env=podman.env, check=True).stdout.strip()
    print(f"  compressed (podman save | gzip): {mb(int(saved))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    podman = Podman()
    began = time.monotonic()
    image = podman.build(IMAGE)
    print(f"build (tools/image/build.sh; base and layers cached when unchanged): {time.monotonic() - began:.1f} s")
    sizes(podman, image)

    backend = start_backend()
    cp = ControlPlane(with_kcm=False)
    try:
        cp.start()
        env = InCluster(cp, podman, image, Path(tempfile.mkdtemp(prefix="bench-image-")))
        env.start()
        print("start to ready, all 4 started together:")
        for running in env.all():
            print(f"  {running.name}: {running.ready - running.started:.2f} s")
        print(f"start to ready, one container restarted alone (median of {args.restarts}):")
        for running in env.all():
            times = []
            for _ in range(args.restarts):
                env.restart(running)
                times.append(running.ready - running.started)
            print(f"  {running.name}: {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f})")

        for running in env.all():
            successor = env.kubelet.create_pod(NAMESPACE, f"{running.name}-next",
                                               {"metadata": {}, "spec": running.pod["spec"]})
            env.kubelet.rotate(running.volume, env.kubelet.bound_token(successor))
        for running in env.all():
            env.kubelet.delete_pod(NAMESPACE, running.pod["metadata"]["name"])
        began = time.monotonic()
        env.stack.apply(endpoint_manifest("after-rotation", f"{backend.url}/after"))
        wait_until(lambda: all(httpx.get(f"{p.url}/orchestrator/after-rotation/x").status_code == 200
                               for p in env.proxies), timeout=120, interval=0.05)
        print(f"after rotation + revocation: new Endpoint routes on all 3 proxies in "
              f"{time.monotonic() - began:.2f} s")
        refused = sum(r.log().count("refused the service-account token") for r in env.all())
        print(f"  'refused the service-account token' log lines: {refused}")
    finally:
        podman.remove_all()
        cp.stop()
        stop(backend.proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
