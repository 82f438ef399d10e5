"""The service-account token file: re-read on change and after a refusal,
one log line per authentication state; the API server address from the
environment. Real files in a temporary directory, no HTTP."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from orchestrator.serviceaccount import IdentityError, ServiceAccount, TokenFile, api_server_url


def write_atomically(path: Path, text: str) -> None:
    # What the kubelet does: write elsewhere, then swap (a new inode).
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def rewrite_keeping_stat(path: Path, text: str) -> None:
    """Same inode, size and mtime: a change no stat() can see."""
    before = path.stat()
    assert len(text) == before.st_size
    with open(path, "r+") as f:
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_mtime_ns == before.st_mtime_ns


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    return path


def test_header_is_the_file_content_stripped(token_path: Path) -> None:
    assert TokenFile(token_path, "test").header() == "Bearer first-token"


@pytest.mark.parametrize("replace", [write_atomically, lambda p, t: p.write_text(t)],
                         ids=["swapped", "rewritten-in-place"])
def test_a_changed_file_is_read_on_the_next_call(token_path: Path, replace) -> None:
    token = TokenFile(token_path, "test")
    assert token.token() == "first-token"
    replace(token_path, "second-token-longer")
    assert token.token() == "second-token-longer"


def test_an_unseen_change_is_read_after_a_refusal(token_path: Path) -> None:
    token = TokenFile(token_path, "test")
    sent = token.header()
    rewrite_keeping_stat(token_path, "other-token\n")
    assert token.header() == sent  # nothing told it yet
    assert token.refused(sent) is True  # worth a retry: the file holds another token
    assert token.header() == "Bearer other-token"


def test_a_refused_token_still_on_disk_is_not_worth_a_retry(token_path: Path) -> None:
    token = TokenFile(token_path, "test")
    assert token.refused(token.header()) is False


def test_one_log_line_per_authentication_state(token_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = TokenFile(token_path, "kopf")
    caplog.set_level(logging.INFO, logger="orchestrator.serviceaccount")
    for _ in range(50):
        token.refused(token.header())
    for _ in range(50):
        token.accepted()
    token.refused(token.header())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "kopf: the API server refused the service-account token (401 Unauthorized)" in messages[0]
    assert str(token_path) in messages[0]
    assert messages[1] == "kopf: the API server accepts the service-account token again"
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]


def test_while_refused_the_file_is_read_on_every_call(token_path: Path) -> None:
    token = TokenFile(token_path, "test")
    token.refused(token.header())
    rewrite_keeping_stat(token_path, "fresh-token\n")
    assert token.token() == "fresh-token"
    token.accepted()
    rewrite_keeping_stat(token_path, "unseen-tokn\n")
    assert token.token() == "fresh-token"  # accepted again: back to one stat per call


def test_a_missing_file_at_start_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match=r"cannot read the service-account token .*token: No such file"):
        TokenFile(tmp_path / "token", "test").token()


def test_a_file_that_disappears_or_empties_keeps_the_last_token(
        token_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = TokenFile(token_path, "test")
    token.token()
    token_path.write_text("")  # a writer that truncates first, caught in between
    assert token.token() == "first-token"
    token_path.unlink()
    for _ in range(5):
        assert token.token() == "first-token"
    assert len([r for r in caplog.records if "cannot read" in r.getMessage()]) == 1
    token_path.write_text("back-again")
    assert token.token() == "back-again"


@pytest.mark.parametrize("environ, url", [
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
    ({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "36443"}, "https://127.0.0.1:36443"),
    ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
    ({"KUBERNETES_SERVICE_HOST": "api.internal"}, "https://api.internal:443"),
])
def test_api_server_url_from_the_environment(environ: dict[str, str], url: str) -> None:
    assert api_server_url(environ) == url


@pytest.mark.parametrize("environ, message", [
    ({}, "KUBERNETES_SERVICE_HOST is not set"),
    ({"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "https"}, "must be a port number, not 'https'"),
    ({"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "70000"}, "must be a port number"),
])
def test_api_server_url_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        api_server_url(environ)


def test_service_account_from_a_mounted_directory(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    (tmp_path / "token").write_text("t")
    with pytest.raises(IdentityError, match=r"ca\.crt does not exist: is the service-account token mounted"):
        ServiceAccount.from_environment(env, tmp_path)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    account = ServiceAccount.from_environment(env, tmp_path)
    assert (account.server, account.namespace) == ("https://127.0.0.1:6443", None)
    (tmp_path / "namespace").write_text("orchestrator-system")
    account = ServiceAccount.from_environment(env, tmp_path)
    assert account.namespace == "orchestrator-system"
    assert account.token_file("kopf").header() == "Bearer t"


def test_an_unreadable_token_is_a_clear_error(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1"}
    (tmp_path / "token").mkdir()  # unreadable as a file, whoever runs the test
    (tmp_path / "ca.crt").write_text("pem")
    with pytest.raises(IdentityError, match=r"cannot read .*token: Is a directory"):
        ServiceAccount.from_environment(env, tmp_path)
