"""The harness the tests, `tools/dev.py` and `bench/` share (not part of the product).

    harness       processes on 127.0.0.1: free ports, the proxy, the backend, waits
    backend       a controllable aiohttp backend (`python testbed/backend.py PORT`)
    rawhttp       raw-socket HTTP/1.1 peers and an h11 message reader
    controlplane  etcd + kube-apiserver (+ controller-manager) from tools/controlplane
    stack         the operator and proxy replicas as local processes against it
    podman, kubelet, incluster   the image in podman, Pods with a kubelet's identity

It lives at the top level, outside the wheel: pytest finds it through
`pythonpath = ["."]`; the scripts put the repository root on `sys.path`.
"""
