"""The operator's pass on fake time (operator/plan.py, inputs.py, freshness.py):
what it writes, what it holds back, and what it must never conclude."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from orchestrator.core import contract
from orchestrator.core.model import Defaults
from orchestrator.operator import status as status_logic
from orchestrator.operator.freshness import Contact, FreshnessRule
from orchestrator.operator.inputs import Inputs
from orchestrator.operator.plan import Changes, Now, Pass, Plan, StatusPatch, Written
from orchestrator.operator.reconciler import Debounce

NS, REGISTRY = "orchestrator-system", "orchestrator-registry"
T0 = 1_800_000_000.0  # wall clock at the start of every test
HORIZON = 30.0


class World:
    """Inputs + what was written + a fake clock, with the reconciler's commit step
    (`Written.record`) and none of its I/O."""

    def __init__(self, hold: float = 1.0, allow_link_local: bool = False) -> None:
        self.inputs = Inputs(NS, REGISTRY)
        self.written = Written()
        self.contact = Contact()
        self.pass_ = Pass(Defaults(), FreshnessRule(HORIZON), hold_seconds=hold, allow_link_local=allow_link_local)
        self.mono, self.wall = 100.0, T0
        self.created = 0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def now(self) -> Now:
        return Now(self.mono, self.wall)

    def apply(self, name: str, generation: int = 1, status: Optional[dict] = None, namespace: str = "default",
              created: Optional[str] = None, **spec: Any) -> dict:
        self.created += 1
        body = {"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}-{name}",
                             "generation": generation,
                             "creationTimestamp": created or f"2026-01-01T00:00:{self.created:02d}Z"},
                "spec": {"url": f"http://backend.example/{name}", **spec}}
        if status is not None:
            body["status"] = status
        self.inputs.observe_endpoint(None, body, self.mono)
        return body

    def report(self, replica: str, routes: dict[str, tuple[str, int]], heartbeat: Optional[float] = None,
               health: str = "Healthy") -> dict:
        """routes: route -> (uid, generation) loaded on this replica."""
        rep = contract.Report(replica, self.wall if heartbeat is None else heartbeat, "rev",
                              {r: contract.RouteReport(health, "Closed", uid, gen) for r, (uid, gen) in routes.items()})
        body = {"metadata": {"namespace": NS, "name": contract.report_name(REGISTRY, replica),
                             "labels": {contract.REPORT_LABEL: REGISTRY}}, "data": rep.to_data()}
        self.inputs.observe_configmap(None, body)
        return body

    def run(self) -> Plan:
        compile_dirty, keys, routes = self.inputs.take_dirty()
        plan = self.pass_.run(self.inputs, Changes(compile_dirty, keys, routes), self.written, self.contact,
                              self.now())
        self.written.record(plan, {s.obj.meta.uid for s in self.inputs.endpoints.values()})
        return plan

    def echo(self, plan: Plan) -> None:
        """The API server sends our own status patches back as MODIFIED events."""
        for patch in plan.statuses:
            seen = self.inputs.endpoints[patch.key]
            body = {"metadata": seen.body_meta, "spec": dict(seen.obj.spec), "status": patch.desired}
            self.inputs.observe_endpoint("MODIFIED", body, self.mono, self.written.statuses.get(patch.uid))


def loaded(*names: str, generation: int = 1) -> dict[str, tuple[str, int]]:
    return {n: (f"uid-default-{n}", generation) for n in names}


def cond(st: dict, ctype: str) -> dict:
    return dict(status_logic.condition(st, ctype) or {})


def by_name(plan: Plan) -> dict[str, StatusPatch]:
    return {p.key[1]: p for p in plan.statuses}


def programmed(*replicas: str) -> World:
    """Endpoint "pay", loaded on every replica, its status written and echoed back."""
    w = World()
    for r in replicas:
        w.report(r, {})
    w.run()
    w.apply("pay")
    w.run()
    for r in replicas:
        w.report(r, loaded("pay"))
    plan = w.run()
    assert len(plan.statuses) == 1
    w.echo(plan)
    return w


# -- debounce and bursts --------------------------------------------------------------

def test_debounce_runs_the_first_change_at_once_and_coalesces_a_burst_behind_it() -> None:
    d = Debounce(0.05)
    assert d.delay(10.0) == 0.0  # quiet: handled at once
    d.ran(10.0)
    assert d.delay(10.01) == pytest.approx(0.04)  # a burst waits for the window's end...
    assert d.delay(10.049) == pytest.approx(0.001)
    d.ran(10.05)
    assert d.delay(10.2) == 0.0  # ...and the next quiet change is immediate again


def test_a_change_to_the_routes_does_not_wait_behind_a_pass_that_only_read_reports() -> None:
    d = Debounce(0.05)
    d.ran(10.0, compile=True)
    d.ran(10.04)  # the replicas report the new revision: a pass without a compile
    assert d.delay(10.06) == pytest.approx(0.03)  # more reports coalesce behind it...
    assert d.delay(10.06, compile=True) == 0.0  # ...the next edit is handled at once
    d.ran(10.06, compile=True)
    assert d.delay(10.07, compile=True) == pytest.approx(0.04)  # a burst of edits still coalesces


def test_a_burst_of_applies_costs_one_compile_and_one_registry_write() -> None:
    w = World()
    w.report("r0", {})
    w.run()
    for i in range(100):
        w.apply(f"svc-{i}")
    plan = w.run()
    assert plan.registry is not None and len(plan.registry.routes) == 100
    assert w.run().registry is None  # nothing new: nothing to write


# -- the hold: Accepted + Programmed + Ready land together -----------------------------------

def test_a_new_endpoint_is_held_until_programmed_then_written_once() -> None:
    w = World(hold=1.0)
    w.report("r0", {})
    w.report("r1", {})
    w.run()
    w.apply("pay")
    plan = w.run()
    assert plan.registry is not None
    assert plan.statuses == [] and plan.wake_at == pytest.approx(w.mono + 1.0)  # "Pending" is not worth a write
    w.advance(0.3)
    w.report("r0", loaded("pay"))
    assert w.run().statuses == []  # 1 of 2: still held
    w.report("r1", loaded("pay"))
    plan = w.run()
    (patch,) = plan.statuses
    assert [cond(patch.desired, c)["status"] for c in ("Accepted", "Programmed", "Ready")] == ["True"] * 3
    assert cond(patch.desired, "Programmed")["message"] == "loaded on 2 of 2 proxy replicas"
    assert ("Normal", "Programmed", "generation 1 loaded on 2 of 2 proxy replicas") in patch.events


def test_a_slow_replica_gets_the_pending_status_once_the_hold_expires() -> None:
    w = World(hold=1.0)
    w.report("r0", {})
    w.run()
    w.apply("pay")
    assert w.run().statuses == []
    w.advance(1.01)
    (patch,) = w.run().statuses  # woken by wake_at: nothing changed but the time
    assert cond(patch.desired, "Programmed")["reason"] == "Pending"


def test_an_edit_moves_observed_generation_and_programmed_together() -> None:
    w = programmed("r0")
    w.apply("pay", generation=2, methods=["GET", "POST"])
    assert w.run().statuses == []  # held: the registry carries generation 2, no replica loaded it yet
    w.report("r0", loaded("pay", generation=2))
    (patch,) = w.run().statuses
    assert patch.desired["observedGeneration"] == 2
    assert cond(patch.desired, "Programmed") | {"lastTransitionTime": None} == {
        "type": "Programmed", "status": "True", "reason": "Programmed", "observedGeneration": 2,
        "message": "loaded on 1 of 1 proxy replicas", "lastTransitionTime": None}


# -- status diffing -----------------------------------------------------------------------

def test_nothing_visible_changed_means_no_write() -> None:
    w = programmed("r0")  # ends with our own patch coming back as MODIFIED
    w.advance(5)
    w.report("r0", loaded("pay"))  # a heartbeat only
    plan = w.run()
    assert plan.statuses == [] and plan.registry is None and plan.evaluated == 0


def test_only_the_endpoints_whose_inputs_changed_are_evaluated() -> None:
    w = World()
    names = [f"svc-{i}" for i in range(50)]
    for n in names:
        w.apply(n)
    w.report("r0", loaded(*names))
    w.echo(w.run())
    w.report("r0", loaded(*names) | {"svc-7": ("uid-default-svc-7", 1)})  # unchanged content
    assert w.run().evaluated == 0
    routes = loaded(*names)
    w.inputs.observe_configmap(None, {
        "metadata": {"namespace": NS, "name": contract.report_name(REGISTRY, "r0"),
                     "labels": {contract.REPORT_LABEL: REGISTRY}},
        "data": contract.Report("r0", w.wall, "rev", {
            r: contract.RouteReport("Unhealthy" if r == "svc-7" else "Healthy", "Closed", uid, gen)
            for r, (uid, gen) in routes.items()}).to_data()})
    plan = w.run()
    assert plan.evaluated == 1
    (patch,) = plan.statuses
    assert patch.key == ("default", "svc-7") and patch.desired["health"] == "Unhealthy"
    assert patch.events[0][:2] == ("Warning", "Unhealthy")


def test_a_superseded_patch_keeps_the_events_from_what_the_object_shows() -> None:
    w = World()
    w.report("r0", {})
    w.run()
    w.apply("pay")
    w.run()
    w.report("r0", loaded("pay"), health="Healthy")
    first = by_name(w.run())["pay"]
    w.report("r0", loaded("pay"), health="Unhealthy")
    second = by_name(w.run())["pay"]
    merged = first.superseded_by(second)
    assert merged.current is first.current and merged.desired is second.desired
    reasons = [e[1] for e in merged.events]
    assert "Programmed" in reasons and "Unhealthy" in reasons


# -- restart ---------------------------------------------------------------------------------

def test_a_restarted_operator_with_an_up_to_date_world_writes_nothing() -> None:
    w = World()
    w.report("r0", {})
    w.report("r1", {})
    w.run()
    for n in ("pay", "users"):
        w.apply(n)
    w.apply("bad", url="ftp://nope.example")
    w.run()
    w.report("r0", loaded("pay", "users"))
    w.report("r1", loaded("pay", "users"))
    w.run()
    statuses = w.written.statuses  # by uid: everything the first operator wrote
    assert len(statuses) == 3
    registry = w.written.registry
    w.advance(60)

    restarted = World()
    restarted.mono, restarted.wall = w.mono + 1000, w.wall  # a new process: a new monotonic origin
    restarted.written.registry = registry  # found at start
    for (ns, name), seen in w.inputs.endpoints.items():
        body = {"metadata": seen.body_meta, "spec": dict(seen.obj.spec), "status": statuses[seen.obj.meta.uid]}
        restarted.inputs.observe_endpoint(None, body, restarted.mono)
    restarted.report("r0", loaded("pay", "users"))
    restarted.report("r1", loaded("pay", "users"))
    plan = restarted.run()
    assert plan.registry is None and plan.statuses == [] and plan.source_events == []


# -- freshness: stale replicas and API server outages ------------------------------------------

def _two_programmed() -> World:
    return programmed("r0", "r1")


def test_a_stale_replica_drops_out_of_programmed_only_after_a_relisting() -> None:
    w = _two_programmed()
    for _ in range(4):
        w.advance(10)
        w.report("r0", loaded("pay"))  # r1 went silent
    plan = w.run()
    assert plan.verify_reports and plan.statuses == []  # looks stale: list first, conclude nothing yet
    listing = [w.report("r0", loaded("pay")), w.report("r1", loaded("pay"), heartbeat=w.wall - 40)]
    w.inputs.replace_reports(listing, verified_at=w.wall)
    plan = w.run()
    assert not plan.verify_reports
    (patch,) = plan.statuses
    assert cond(patch.desired, "Programmed")["message"] == "loaded on 1 of 1 proxy replicas"
    assert patch.desired["replicas"]["reporting"] == 1


def test_a_relisting_that_shows_a_fresh_heartbeat_keeps_the_replica() -> None:
    w = _two_programmed()
    w.advance(31)
    w.report("r0", loaded("pay"))
    assert w.run().verify_reports
    w.inputs.replace_reports([w.report("r0", loaded("pay")), w.report("r1", loaded("pay"))], verified_at=w.wall)
    plan = w.run()
    assert plan.statuses == [] and plan.fresh == {contract.report_name(REGISTRY, r) for r in ("r0", "r1")}


def test_an_api_server_outage_is_not_evidence_that_replicas_died() -> None:
    w = _two_programmed()
    w.contact.lost(w.wall, "connection refused")
    w.advance(45)  # longer than the horizon: nobody could write a heartbeat
    plan = w.run()
    assert plan.statuses == [] and not plan.verify_reports
    w.contact.back(w.wall)  # the API server answers; the old heartbeats are all we have
    w.inputs.replace_reports([w.report("r0", loaded("pay"), heartbeat=w.wall - 50),
                              w.report("r1", loaded("pay"), heartbeat=w.wall - 50)], verified_at=w.wall)
    plan = w.run()
    assert plan.statuses == [] and not plan.verify_reports  # a full horizon to write again
    w.advance(5)
    w.report("r0", loaded("pay"))
    w.report("r1", loaded("pay"))
    assert w.run().statuses == []
    assert w.contact.outages == 1


def test_a_replica_dead_before_the_outage_is_not_brought_back_by_it() -> None:
    w = _two_programmed()
    w.advance(HORIZON + 1)
    w.report("r0", loaded("pay"))
    w.inputs.replace_reports([w.report("r0", loaded("pay")), w.report("r1", loaded("pay"), heartbeat=T0)],
                             verified_at=w.wall)
    (patch,) = w.run().statuses  # r1 went silent and was dropped
    assert cond(patch.desired, "Programmed")["message"] == "loaded on 1 of 1 proxy replicas"
    w.contact.lost(w.wall, "connection refused")
    w.advance(20)
    w.contact.back(w.wall)
    w.report("r0", loaded("pay"))
    plan = w.run()
    assert contract.report_name(REGISTRY, "r1") not in plan.fresh
    assert contract.report_name(REGISTRY, "r0") in plan.fresh
    assert plan.statuses == []  # nothing visible changed: nothing is rewritten


def test_replicas_that_stay_silent_after_the_outage_do_drop_out() -> None:
    w = _two_programmed()
    w.contact.lost(w.wall, "connection refused")
    w.advance(20)
    w.contact.back(w.wall)
    w.advance(HORIZON + 1)
    w.report("r0", loaded("pay"))
    assert w.run().verify_reports
    w.inputs.replace_reports([w.report("r0", loaded("pay")), w.report("r1", loaded("pay"), heartbeat=T0)],
                             verified_at=w.wall)
    (patch,) = w.run().statuses
    assert cond(patch.desired, "Programmed")["message"] == "loaded on 1 of 1 proxy replicas"


# -- conflicts and ConfigMap sources --------------------------------------------------------------

def test_a_route_conflict_is_status_and_the_loser_takes_over_when_the_winner_goes() -> None:
    w = World()
    w.run()
    w.apply("users", namespace="team-old", created="2026-01-01T00:00:01Z")
    w.apply("users", namespace="team-new", created="2026-01-01T00:00:02Z")
    plan = w.run()
    loser = by_name_ns(plan)[("team-new", "users")]
    accepted = cond(loser.desired, "Accepted")
    assert accepted["status"] == "False" and accepted["reason"] == "RouteConflict"
    assert "team-old/users" in accepted["message"]
    assert loser.events[0][:2] == ("Warning", "RouteConflict")
    assert [r.source.namespace for r in plan.registry.routes.values()] == ["team-old"]
    w.echo(plan)
    w.inputs.observe_endpoint("DELETED", {"metadata": {"namespace": "team-old", "name": "users"}}, w.mono)
    plan = w.run()
    assert [r.source.namespace for r in plan.registry.routes.values()] == ["team-new"]
    (patch,) = plan.statuses
    assert patch.key == ("team-new", "users") and cond(patch.desired, "Accepted")["status"] == "True"


@pytest.mark.parametrize("allowed", [False, True])
def test_a_link_local_backend_is_refused_in_status_unless_the_operator_allows_it(allowed: bool) -> None:
    w = World(allow_link_local=allowed)
    w.run()
    w.apply("metadata", url="http://169.254.169.254/latest")
    w.apply("plain")
    plan = w.run()
    assert sorted(plan.registry.routes) == (["metadata", "plain"] if allowed else ["plain"])
    if not allowed:
        patch = by_name_ns(plan)[("default", "metadata")]
        accepted = cond(patch.desired, "Accepted")
        assert accepted["status"] == "False" and accepted["reason"] == "LinkLocalBackend"
        assert "169.254.169.254 is link-local" in accepted["message"] and "--allow-link-local" in accepted["message"]
        assert patch.events[0][:2] == ("Warning", "LinkLocalBackend")


def by_name_ns(plan: Plan) -> dict[tuple[str, str], StatusPatch]:
    return {p.key: p for p in plan.statuses}


def test_a_configmap_source_going_bad_keeps_its_last_good_entries_and_comes_back() -> None:
    w = World()
    w.run()

    def source(text: str) -> None:
        w.inputs.observe_configmap("MODIFIED", {
            "metadata": {"namespace": "default", "name": "classic", "uid": "cm-1",
                         "labels": {contract.SOURCE_LABEL: "true"}},
            "data": {contract.SOURCE_KEY: text}})

    source("endpoints:\n- {name: cm_one, url: 'http://a.example'}\n- {name: cm_bad, url: 'ftp://b.example'}\n")
    plan = w.run()
    assert sorted(plan.registry.routes) == ["cm_one"]
    assert [(e.type, e.reason) for e in plan.source_events] == [("Warning", "InvalidEntry")]
    assert "cm_bad" in plan.source_events[0].message

    source("endpoints: [ {url: broken")
    plan = w.run()
    assert plan.registry is None  # the last good entries keep routing
    assert [(e.type, e.reason) for e in plan.source_events] == [("Warning", "InvalidEntry")]
    assert "last good entries keep routing" in plan.source_events[0].message
    assert w.run().source_events == []  # said once

    source("endpoints:\n- {name: cm_one, url: 'http://a.example'}\n- {name: cm_two, url: 'http://c.example'}\n")
    plan = w.run()
    assert sorted(plan.registry.routes) == ["cm_one", "cm_two"]
    assert [(e.type, e.reason) for e in plan.source_events] == [("Normal", "Loaded")]


def test_a_source_that_was_already_broken_before_a_restart_is_not_reported_again() -> None:
    w = World()
    w.inputs.observe_configmap(None, {
        "metadata": {"namespace": "default", "name": "classic", "labels": {contract.SOURCE_LABEL: "true"}},
        "data": {contract.SOURCE_KEY: "endpoints: [ {url: broken"}})
    assert w.run().source_events == []
