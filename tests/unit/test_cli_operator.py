"""`orchestrator operator` flags that feed the compiler."""

from __future__ import annotations

import pytest

from orchestrator.cli import build_parser
from orchestrator.settings import OperatorSettings, load


def allow_link_local(argv: list[str]) -> bool:
    return load(OperatorSettings, build_parser().parse_args(["operator", *argv])).allow_link_local


def test_link_local_backends_are_refused_unless_the_flag_or_env_allows_them(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("ORCHESTRATOR_ALLOW_LINK_LOCAL", raising=False)
    assert allow_link_local([]) is False
    assert allow_link_local(["--allow-link-local"]) is True
    monkeypatch.setenv("ORCHESTRATOR_ALLOW_LINK_LOCAL", "true")
    assert allow_link_local([]) is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--help"])
    assert "ORCHESTRATOR_ALLOW_LINK_LOCAL" in capsys.readouterr().out


@pytest.mark.parametrize("kubeconfig, says", [
    ("absent", "cannot read kubeconfig"),
    ("exec", "exec or auth-provider plugin"),
])
def test_an_unusable_kubeconfig_is_one_line_and_exit_2(tmp_path, kubeconfig: str, says: str) -> None:
    import json
    import subprocess
    import sys

    from testbed.harness import MAIN
    path = tmp_path / "kubeconfig"
    if kubeconfig == "exec":
        path.write_text(json.dumps({
            "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"exec": {"command": "aws"}}}]}))
    done = subprocess.run([sys.executable, str(MAIN), "operator", "--kubeconfig", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
