"""`python main.py`: first run, flags versus environment, bad config at startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from testbed.harness import MAIN, config_yaml, drain, endpoint, free_port, stop_proxy, wait_ready, wait_until

from orchestrator.core.config_file import SAMPLE_CONFIG

pytestmark = pytest.mark.timeout(60)

CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k not in ("PORT", "HOST", "CONFIG_PATH", "LOG_LEVEL", "RELOAD", "ACCESS_LOG")
             and not k.startswith("ORCHESTRATOR_")}


def run(args, cwd, env=None):
    return subprocess.Popen([sys.executable, str(MAIN), *args], cwd=cwd, env={**CLEAN_ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_first_run_creates_the_sample_config_and_accepts_upper_case_level(tmp_path):
    port = free_port()
    proc = run(["--host", "127.0.0.1", "--port", str(port), "--log-level", "DEBUG"], cwd=tmp_path)
    output = drain(proc)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, output)
        created = tmp_path / "config" / "config.yaml"
        assert created.read_text() == SAMPLE_CONFIG
        status = httpx.get(f"http://127.0.0.1:{port}/config/status").json()
        assert status["config_path"] == "config/config.yaml" and status["endpoints_in_file"] == 2
        names = [e["name"] for e in httpx.get(f"http://127.0.0.1:{port}/registry/endpoints").json()["endpoints"]]
        assert names == ["httpbin_get", "secure_api"]
    finally:
        stop_proxy(proc)
    assert b"created a sample configuration" in b"".join(output)


def test_flags_win_over_environment(tmp_path, backend):
    config = tmp_path / "mine.yaml"
    config.write_text(config_yaml([endpoint("svc", f"{backend.url}/api")], health={"enabled": False}))
    env_port, flag_port = free_port(), free_port()
    proc = run(["--config", str(config), "--port", str(flag_port), "--host", "127.0.0.1", "--log-level", "warning"],
               cwd=tmp_path, env={"PORT": str(env_port), "CONFIG_PATH": str(tmp_path / "absent.yaml"),
                                  "LOG_LEVEL": "not-a-level", "HOST": "0.0.0.0"})
    output = drain(proc)
    try:
        wait_ready(f"http://127.0.0.1:{flag_port}", proc, output)
        assert httpx.get(f"http://127.0.0.1:{flag_port}/orchestrator/svc/x").status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{env_port}/health", timeout=1)
        assert not (tmp_path / "absent.yaml").exists()
    finally:
        stop_proxy(proc)


def test_environment_used_without_flags(tmp_path, backend):
    config = tmp_path / "env.yaml"
    config.write_text(config_yaml([endpoint("svc", f"{backend.url}/api")], health={"enabled": False}))
    port = free_port()
    proc = run([], cwd=tmp_path, env={"PORT": str(port), "HOST": "127.0.0.1", "CONFIG_PATH": str(config),
                                       "LOG_LEVEL": "WARNING"})
    output = drain(proc)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, output)
        assert httpx.get(f"http://127.0.0.1:{port}/config/status").json()["config_path"] == str(config)
    finally:
        stop_proxy(proc)


def test_bad_config_at_startup_exits_non_zero_naming_the_entry(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(config_yaml([endpoint("fine", "http://127.0.0.1:9/x"),
                                   endpoint("broken", "gopher://x", methods=["GET"])]))
    proc = run(["--config", str(config), "--port", str(free_port()), "--host", "127.0.0.1"], cwd=tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert b"endpoints[1] (broken): url:" in out, out
    assert b"Traceback" not in out


@pytest.mark.parametrize("args, message", [
    (["--log-level", "loud"], b"--log-level"),
    (["--port", "99999"], b"--port"),
    (["--port", "http"], b"--port"),
])
def test_bad_flags_exit_with_usage(tmp_path, args, message):
    proc = run(args, cwd=tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and message in out and b"Traceback" not in out
    assert not (tmp_path / "config").exists()


def test_unreadable_config_is_a_clear_error(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    proc = run(["--config", str(tmp_path / "dir.yaml"), "--port", str(free_port())], cwd=tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and b"dir.yaml" in out
    assert b"Traceback" not in out, out


def test_bad_environment_value_is_one_line_naming_the_knob(tmp_path):
    proc = run([], cwd=tmp_path, env={"ORCHESTRATOR_HEAD_TIMEOUT": "soon"})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert b"--head-timeout (env ORCHESTRATOR_HEAD_TIMEOUT)" in out and b"Traceback" not in out
    assert len(out.strip().splitlines()) == 1, out


def run_logging(tmp_path, backend, *flags: str) -> tuple[subprocess.Popen, int]:
    """A proxy with one route `svc` to the backend and the access log on."""
    config = tmp_path / "c.yaml"
    config.write_text(config_yaml([endpoint("svc", f"{backend.url}/api")], health={"enabled": False}))
    port = free_port()
    return run(["--config", str(config), "--port", str(port), "--host", "127.0.0.1", "--access-log", *flags],
               cwd=tmp_path), port


def test_json_access_log_has_one_line_per_call(tmp_path, backend):
    proc, port = run_logging(tmp_path, backend, "--log-format", "json")
    output = drain(proc)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, output)
        r = httpx.get(f"http://127.0.0.1:{port}/orchestrator/svc/thing?secret=1", headers={"x-request-id": "req-42"})
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/orchestrator/nope/x").status_code == 404

        def access_lines():
            lines = [json.loads(line) for line in b"".join(output).decode().splitlines() if line.startswith("{")]
            return [e for e in lines if e["logger"] == "orchestrator.proxy.access_log"]
        entries = wait_until(lambda: access_lines() if len(access_lines()) >= 2 else None, message="two access lines")
    finally:
        stop_proxy(proc)
    ok, missing = entries
    assert ok["request_id"] == "req-42" and ok["route"] == "svc" and ok["method"] == "GET"
    assert ok["status"] == 200 and ok["bytes"] == len(r.content) and ok["path"] == "/orchestrator/svc/thing"
    assert ok["upstream_ms"] > 0 and ok["duration_ms"] >= ok["upstream_ms"]
    assert "secret" not in json.dumps(ok)  # the query string is not logged
    assert missing["route"] == "nope" and missing["status"] == 404
    # every line the process wrote is JSON (uvicorn's and ours)
    text = b"".join(output).decode()
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), text


def test_a_log_reader_that_stops_reading_does_not_stop_the_proxy(tmp_path, backend):
    # stdout/stderr are a pipe nobody reads: it fills after 64 KiB, as a stuck log
    # collector's would. The access log writes from its own thread, so calls go on.
    proc, port = run_logging(tmp_path, backend, "--log-level", "warning")
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, [])
        served = 0
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for i in range(2500):  # ~170 bytes of access log each: 6x what the pipe holds
                if client.get(f"/orchestrator/svc/call-{i}").status_code == 200:
                    served += 1
        assert served == 2500
    finally:
        stop_proxy(proc)
        proc.communicate(timeout=10)  # reads the pipe at last, so the process can exit
