"""`make dev`: the whole product on the local control plane, in one command.

Starts etcd + kube-apiserver (tools/controlplane), installs the CRDs, runs the
operator and two proxy replicas as local processes, a sample backend on
127.0.0.1:9100, and applies examples/endpoints.yaml. Ctrl-C stops everything.
It reuses the test suite's own harness, so what you try here is what the
cluster tests exercise.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # testbed/, the shared harness (kept out of the product's wheel)

from testbed.controlplane import ControlPlane  # noqa: E402
from testbed.stack import Stack  # noqa: E402
from testbed.harness import BACKEND, stop, wait_for_port  # noqa: E402

BACKEND_PORT = 9100


def main() -> int:
    workdir = ROOT / ".cluster" / "dev"
    workdir.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(keep_dir=True)
    backend = None
    stack = None
    try:
        started = time.monotonic()
        cp.start()
        backend = subprocess.Popen([sys.executable, str(BACKEND), str(BACKEND_PORT)])
        wait_for_port(BACKEND_PORT, backend)
        stack = Stack(cp, workdir, replicas=2).start()
        cp.kubectl("apply", "-f", str(ROOT / "examples" / "endpoints.yaml"))
        ports = " ".join(str(p.port) for p in stack.proxies)
        print(f"""
Orchestrator is running ({time.monotonic() - started:.0f} s). In another shell:

  export KUBECONFIG={cp.kubeconfig} PATH={cp.bin_dir}:$PATH
  kubectl get endpoints.orchestrator.dev
  curl -H 'Authorization: Bearer demo' http://127.0.0.1:{stack.proxies[0].port}/orchestrator/payment_service/charges

Proxy replicas listen on 127.0.0.1 ports {ports}; logs in {workdir}.
Ctrl-C stops everything.""", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if stack is not None:
            stack.stop()
        if backend is not None:
            stop(backend)
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
