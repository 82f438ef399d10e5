"""The Pod's service-account identity, as a kubelet provides it.

`KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT` name the API server, and
/var/run/secrets/kubernetes.io/serviceaccount/ holds `token`, `ca.crt` and
`namespace`. The token is a projected, bound token: the kubelet rewrites the
file before it expires, and it stops being valid at once when the Pod it is
bound to is deleted. So it is never read once: `TokenFile` re-reads it
whenever the file changed (a stat per call) and after the API server refused
it, and logs one line per change of the authentication state, not one per
failed call. Both client stacks use it: the official client (orchestrator.kube)
and the operator's aiohttp one (orchestrator.operator.credentials).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class IdentityError(Exception):
    """The in-cluster identity is incomplete (a message, not a traceback)."""


_UNREAD = object()  # a stamp no stat() result equals


class TokenFile:
    """A bearer token file that may be replaced at any time.

    Thread-safe: the official client calls it from worker threads.
    """

    def __init__(self, path: Path, client: str) -> None:
        self.path = path
        self.client = client  # named in the log lines: "kopf", "kubernetes client"
        self._lock = threading.Lock()
        self._stamp: object = _UNREAD
        self._token = ""
        self._refused = False  # the API server answered 401 to the token we hold

    def header(self) -> str:
        """`Bearer <token>`, re-read first if the file changed or was refused."""
        return f"Bearer {self.token()}"

    def token(self) -> str:
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp or self._refused:
                self._read(stamp)
            return self._token

    def refused(self, sent: Optional[str] = None) -> bool:
        """The API server answered 401 Unauthorized. Re-read the file now;
        True if it holds a token other than `sent` (worth one retry).

        Logs once when authentication starts failing, not per call.
        """
        with self._lock:
            if not self._refused:
                log.warning("%s: the API server refused the service-account token (401 Unauthorized); "
                            "re-reading %s on every call until it is accepted", self.client, self.path)
            self._refused = True
            self._read(self._stat())
            return sent is not None and sent != f"Bearer {self._token}"

    def accepted(self) -> None:
        """A call authenticated: closes a failure state with one log line."""
        if self._refused:  # unlocked fast path: the common case costs one attribute read
            with self._lock:
                if self._refused:
                    self._refused = False
                    log.info("%s: the API server accepts the service-account token again", self.client)

    def _stat(self) -> Optional[tuple[int, int, int, int]]:
        # The kubelet swaps a symlinked directory (new inode); an in-place
        # rewrite changes mtime and usually size. stat() follows the symlink.
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self, stamp: Optional[tuple[int, int, int, int]]) -> None:
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if not self._token:
                raise IdentityError(f"cannot read the service-account token {self.path}: "
                                    f"{exc.strerror or exc}") from None
            if self._stamp is not None:
                log.warning("%s: cannot read the service-account token %s: %s; keeping the last one",
                            self.client, self.path, exc.strerror or exc)
            self._stamp = None  # stat() says None while it is missing: no re-read, no second line
            return
        if not token:
            if not self._token:
                raise IdentityError(f"the service-account token {self.path} is empty")
            self._stamp = _UNREAD  # caught mid-write by a writer that truncates first: read again
            return
        self._stamp, self._token = stamp, token


def api_server_url(environ: Mapping[str, str]) -> str:
    """https://host:port from KUBERNETES_SERVICE_HOST/PORT (IPv6 in brackets)."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = environ.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
    if not host:
        raise IdentityError("KUBERNETES_SERVICE_HOST is not set: not running in a Pod "
                            "(give --kubeconfig or set KUBECONFIG instead)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise IdentityError(f"KUBERNETES_SERVICE_PORT must be a port number, not {port!r}")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{port}"


@dataclass(frozen=True)
class ServiceAccount:
    """Where the API server is and how to trust and authenticate to it."""

    server: str
    ca_path: Path
    namespace: Optional[str]
    token_path: Path

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ,
                         directory: Path = SERVICE_ACCOUNT_DIR) -> "ServiceAccount":
        """Blocking (reads files): call it off the event loop."""
        server = api_server_url(environ)
        token_path, ca_path = directory / "token", directory / "ca.crt"
        for path in (token_path, ca_path):
            try:
                path.open("rb").close()
            except FileNotFoundError:
                raise IdentityError(f"{path} does not exist: is the service-account token mounted "
                                    "(automountServiceAccountToken)?") from None
            except OSError as exc:  # unreadable for this user, a directory, ...
                raise IdentityError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            namespace: Optional[str] = (directory / "namespace").read_text(encoding="utf-8").strip() or None
        except OSError:
            namespace = None
        return cls(server=server, ca_path=ca_path, namespace=namespace, token_path=token_path)

    def token_file(self, client: str) -> TokenFile:
        return TokenFile(self.token_path, client)
