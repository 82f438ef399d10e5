"""The operator/proxy contract: names and the report format."""

from __future__ import annotations

from orchestrator.core import contract


def test_report_round_trip_and_content_ignores_heartbeat() -> None:
    report = contract.Report("r1", 1700000000.1234, "abc", {"pay": contract.RouteReport("Healthy", "Open", "u1", 4)})
    data = report.to_data()
    again = contract.Report.from_data(data)
    assert again == contract.Report("r1", 1700000000.123, "abc", report.routes)
    # a heartbeat-only write: the routes part is the same text, so no parse is needed
    beat = contract.Report("r1", 1700000010.0, "abc", dict(report.routes)).to_data()
    assert beat[contract.REPORT_KEY] == data[contract.REPORT_KEY]
    assert contract.Report.from_data(beat, again, data[contract.REPORT_KEY]).heartbeat == 1700000010.0
    later = contract.Report("r1", 1700000100.0, "abc", dict(report.routes))
    assert later.content() == report.content()
    changed = contract.Report("r1", 1700000100.0, "abc", {"pay": contract.RouteReport("Healthy", "Closed", "u1", 4)})
    assert changed.content() != report.content()


def test_shard_and_report_names() -> None:
    assert contract.shard_names("orchestrator-registry")[:3] == [
        "orchestrator-registry", "orchestrator-registry-1", "orchestrator-registry-2"]
    assert len(contract.shard_names("r")) == contract.MAX_SHARDS
    assert contract.report_name("reg", "pod-abc") == "reg-report-pod-abc"
    assert len(contract.report_name("r" * 200, "p" * 200)) == 253
