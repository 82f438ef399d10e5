"""The operator/proxy contract: names and the report format."""

from __future__ import annotations

import json


from orchestrator.core import contract
from orchestrator.core.breaker import State
from orchestrator.core.health import Health


def test_report_round_trip_and_content_ignores_heartbeat() -> None:
    report = contract.Report("r1", 1700000000.1234, "abc",
                             {"pay": contract.RouteReport(Health.HEALTHY, State.OPEN, "u1", 4)})
    data = report.to_data()
    assert json.loads(data[contract.REPORT_KEY])["routes"]["pay"] == ["Healthy", "Open", "u1", 4]  # the wire: strings
    again = contract.Report.from_data(data)
    assert again == contract.Report("r1", 1700000000.123, "abc", report.routes)
    assert again.routes["pay"].health is Health.HEALTHY and again.routes["pay"].breaker is State.OPEN
    # a heartbeat-only write: the routes part is the same text, so no parse is needed
    beat = contract.Report("r1", 1700000010.0, "abc", dict(report.routes)).to_data()
    assert beat[contract.REPORT_KEY] == data[contract.REPORT_KEY]
    assert contract.Report.from_data(beat, again, data[contract.REPORT_KEY]).heartbeat == 1700000010.0
    later = contract.Report("r1", 1700000100.0, "abc", dict(report.routes))
    assert later.content() == report.content()
    changed = contract.Report("r1", 1700000100.0, "abc",
                              {"pay": contract.RouteReport(Health.HEALTHY, State.CLOSED, "u1", 4)})
    assert changed.content() != report.content()


def test_shard_and_report_names() -> None:
    assert contract.shard_names("orchestrator-registry")[:3] == [
        "orchestrator-registry", "orchestrator-registry-1", "orchestrator-registry-2"]
    assert len(contract.shard_names("r")) == contract.MAX_SHARDS
    assert contract.report_name("reg", "pod-abc") == "reg-report-pod-abc"
    assert len(contract.report_name("r" * 200, "p" * 200)) == 253


def test_report_format_draining_and_registry_error_round_trip() -> None:
    report = contract.Report("r1", 5.0, "abc", {}, draining=True, registry_error="unknown registry format")
    data = report.to_data()
    assert json.loads(data[contract.REPORT_KEY])["format"] == contract.REPORT_FORMAT
    again = contract.Report.from_data(data)
    assert (again.draining, again.registry_error, again.format) == (True, "unknown registry format", 2)
    assert again.content() != contract.Report("r1", 5.0, "abc", {}).content()  # draining is news: write now


def test_a_first_release_report_reads_with_defaults() -> None:
    # What a proxy of the first release wrote: no format, no draining.
    data = {contract.REPORT_KEY: '{"replica":"old","revision":"abc","routes":{"pay":["Healthy","Closed","u1",4]}}',
            contract.HEARTBEAT_KEY: "10.000"}
    old = contract.Report.from_data(data)
    assert (old.format, old.draining, old.registry_error) == (1, False, "")
    assert old.routes == {"pay": contract.RouteReport("Healthy", "Closed", "u1", 4)}


def test_a_newer_report_reads_the_known_fields_and_ignores_the_rest() -> None:
    text = json.dumps({"format": 7, "replica": "new", "revision": "abc", "draining": True, "shiny": {"x": 1},
                       "routes": {"pay": ["Healthy", "Open", "u1", 4, "an extra item", 9]}})
    new = contract.Report.from_data({contract.REPORT_KEY: text, contract.HEARTBEAT_KEY: "1"})
    assert new.format == 7 and new.draining is True
    assert new.routes == {"pay": contract.RouteReport("Healthy", "Open", "u1", 4)}


def test_a_state_this_release_does_not_know_still_counts_the_route_as_loaded() -> None:
    # A newer proxy during a rolling upgrade: refusing its whole report would take every
    # route out of Programmed on that replica (Ready would flap for the whole fleet).
    data = {contract.REPORT_KEY: json.dumps({"replica": "r1", "routes": {"pay": ["Sick", "Jammed", "u1", 4],
                                                                          "ok": ["Healthy", "Open", "u2", 1]}}),
            contract.HEARTBEAT_KEY: "1700000000.0"}
    report = contract.Report.from_data(data)
    assert report.routes == {"pay": contract.RouteReport(Health.UNKNOWN, State.CLOSED, "u1", 4),
                             "ok": contract.RouteReport(Health.HEALTHY, State.OPEN, "u2", 1)}
