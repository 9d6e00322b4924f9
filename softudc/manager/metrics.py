"""The manager's Prometheus metrics, in its own registry: farms, instances, hosts by state and
migrations, read from the store at scrape time, and the long polls waiting now; API requests and
observed events as counters; this manager's leadership (leader.py); the cluster's placement score
and the rebalance plans (PlacementCollector)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from softudc.images.metrics import ImageStoreCollector
from softudc.manager.clusterview import cluster_of
from softudc.manager.farms import FARMS
from softudc.manager.load import load_of
from softudc.manager.migmetrics import MigrationCollector
from softudc.manager.store import Store
from softudc.manager.volumes import VolumeView
from softudc.model.volume import split_volume_id
from softudc.placement.score import score


class ManagerCollector(Collector):
    def __init__(self, store: Store, reports: Callable[[], dict[str, dict[str, Any]]],
                 waiting: Callable[[], int] = lambda: 0) -> None:
        self.store, self.reports, self.waiting = store, reports, waiting

    def collect(self) -> Iterator[GaugeMetricFamily]:
        farms = self.store.objects("farm")
        instances = GaugeMetricFamily("softudc_manager_instances", "Instances per farm and condition",
                                      labels=["farm", "phase"])
        ready = GaugeMetricFamily("softudc_manager_farm_ready", "1 when every instance of the farm runs",
                                  labels=["farm"])
        for f in farms:
            phases = Tally("migrating" if i.get("migrating") else "placed" for i in f.status.get("instances", []))
            phases["unplaced"] = len(f.status.get("unplaced", {}))
            for phase in ("placed", "migrating", "unplaced"):
                instances.add_metric([f.name, phase], phases[phase])
            ready.add_metric([f.name], 1.0 if f.status.get("conditions", {}).get("Ready") else 0.0)
        hosts = GaugeMetricFamily("softudc_manager_hosts", "Hosts by state", labels=["state"])
        states = Tally(r.get("state", "ready") for r in self.reports().values())
        for state in ("ready", "draining", "maintenance", "standby", "down"):
            hosts.add_metric([state], states[state])
        polls = GaugeMetricFamily("softudc_manager_long_polls_waiting",
                                  "Gatekeepers' long polls of their desired state waiting now")
        polls.add_metric([], self.waiting())
        yield instances
        yield ready
        yield hosts
        yield polls


PLAN_STATES = ("planned", "running", "done", "failed")
SCORE_PARTS = ("total", "spread", "spread_cpu", "spread_memory", "penalty")
BREAKS = ("off_ready", "anti_affinity", "over_capacity")


class PlacementCollector(Collector):
    """`softudc_cluster_score{part}`: the balancer's score of the cluster now (placement/score.py;
    lower is better) and its parts: `total` = sqrt(spread_cpu^2 + spread_memory^2) + penalty, so
    the parts do not add up: read one at a time. `softudc_cluster_hard_rule_breaks{rule}`: what the
    penalty counts. `softudc_plans{state}`: the stored rebalance plans by state;
    `softudc_plan_moves{state}`: the moves of the running plans by state (`moving`: in flight)."""

    def __init__(self, store: Store, reports: Callable[[], dict[str, dict[str, Any]]],
                 loads: Callable[[], dict[str, dict[str, Any]]] | None = None) -> None:
        self.store, self.reports = store, reports
        self.loads = loads or (lambda: load_of(store))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        b = score(cluster_of(self.store, self.reports(), self.loads())[0])
        total = GaugeMetricFamily("softudc_cluster_score", "The balancer's cluster score now (lower is better) "
                                  "and its parts; total = sqrt(spread_cpu^2 + spread_memory^2) + penalty",
                                  labels=["part"])
        for part, value in zip(SCORE_PARTS, (b.total, b.spread, b.spread_cpu, b.spread_mem, b.penalty), strict=True):
            total.add_metric([part], round(value, 6))
        yield total
        breaks = GaugeMetricFamily("softudc_cluster_hard_rule_breaks", "Hard placement rules broken now, by rule",
                                   labels=["rule"])
        for rule, items in zip(BREAKS, (b.off_ready, b.anti_affinity, b.over_capacity), strict=True):
            breaks.add_metric([rule], len(items))
        yield breaks
        plans = Tally(str(o.status.get("state", "planned")) for o in self.store.objects("plan"))
        moves: Tally[str] = Tally()
        for o in self.store.objects("plan"):
            if o.status.get("state") == "running":
                states = o.status.get("moves", {})
                moves.update(str(states.get(mv.get("vm"), "pending")) for mv in o.spec.get("moves", []))
        by_state = GaugeMetricFamily("softudc_plans", "Stored rebalance plans by state", labels=["state"])
        for state in PLAN_STATES:
            by_state.add_metric([state], plans[state])
        yield by_state
        in_plans = GaugeMetricFamily("softudc_plan_moves", "Moves of the running plans by state (moving: in flight)",
                                     labels=["state"])
        for state in ("pending", "moving", "done", "failed"):
            in_plans.add_metric([state], moves[state])
        yield in_plans


VOLUME_STATES = ("held", "planned", "unplaced")


class FarmVolumesCollector(Collector):
    """`softudc_farm_volumes{farm, state}`: each farm's volumes as the manager plans them (the view
    GET /v1/volumes gives): `held` (its storage host reports it), `planned` (placed, not reported
    held yet), `unplaced` (no host has room: the farm's status says why). A farm without volumes
    has no series."""

    def __init__(self, store: Store, reports: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.store, self.reports = store, reports

    def collect(self) -> Iterator[GaugeMetricFamily]:
        farms = [(f, o.status) for o in self.store.objects("farm") if (f := FARMS.for_hosts(o))]
        counts: dict[str, Tally[str]] = {f.name: Tally() for f, _ in farms if any(vm.volumes for vm in f.vms)}
        view = VolumeView(farms, self.reports())
        for vid, v in view.plan.volumes.items():
            held_on = view.held.get(vid, ("", {}))[0]
            self._count(counts, vid, "held" if held_on == v.host else "planned")
        for vid in view.plan.unplaced:
            self._count(counts, vid, "unplaced")
        out = GaugeMetricFamily("softudc_farm_volumes", "Each farm's volumes: held by their storage host, "
                                "planned (not reported held yet) or unplaced (no room)", labels=["farm", "state"])
        for farm, tally in sorted(counts.items()):
            for state in VOLUME_STATES:
                out.add_metric([farm, state], tally[state])
        yield out

    @staticmethod
    def _count(counts: dict[str, Tally[str]], vid: str, state: str) -> None:
        parts = split_volume_id(vid)
        if parts is not None and parts[0] in counts:
            counts[parts[0]][state] += 1


# Seconds: most answers take milliseconds; long polls wait up to their `wait` (about 30 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def request_latency(registry: CollectorRegistry) -> Histogram:
    """`softudc_manager_request_duration_seconds{route}`: from the request's arrival to its answer
    (a long poll's includes its wait: read the `desired` route apart)."""
    return Histogram("softudc_manager_request_duration_seconds", "API request duration by route, "
                     "arrival to answer (long polls include their wait)", ["route"], registry=registry,
                     buckets=LATENCY_BUCKETS)


def make_registry(store: Store, reports: Callable[[], dict[str, dict[str, Any]]],
                  waiting: Callable[[], int] = lambda: 0,
                  images: Path | None = None) -> tuple[CollectorRegistry, Counter, Counter]:
    """The registry, the API request counter and the event counter (Migrated, MigrationFailed...).
    `images`: the image store this manager holds (softudc/images/metrics.py), if any."""
    registry = CollectorRegistry()
    if images is not None:
        registry.register(ImageStoreCollector(images))
    registry.register(ManagerCollector(store, reports, waiting))
    registry.register(MigrationCollector(store, reports))  # migrations and VMs by state (migmetrics.py)
    registry.register(PlacementCollector(store, reports))
    registry.register(FarmVolumesCollector(store, reports))
    requests = Counter("softudc_manager_requests", "API requests by route and status", ["route", "status"],
                       registry=registry)
    events = Counter("softudc_manager_events", "Events recorded, by type (Applied, Planned, Migrated, ...)",
                     ["type"], registry=registry)
    return registry, requests, events


class LeaderMetrics:
    """softudc_manager_leader (1 while this manager leads), softudc_manager_leader_changes_total
    (its role changed: elected or stepped down) and softudc_manager_leaderless_seconds (how long the
    group had no leader before this manager's latest election, as seen from it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.leader = Gauge("softudc_manager_leader", "1 while this manager leads its group (runs the controllers)",
                            registry=registry)
        self.changes = Counter("softudc_manager_leader_changes", "Times this manager's role changed (elected "
                               "leader or stepped down)", registry=registry)
        self.leaderless = Gauge("softudc_manager_leaderless_seconds", "Seconds the group was without a leader "
                                "before this manager's latest election, as seen from it", registry=registry)

    def elected(self, leaderless_s: float) -> None:
        self.leader.set(1)
        self.changes.inc()
        self.leaderless.set(round(leaderless_s, 3))

    def deposed(self) -> None:
        self.leader.set(0)
        self.changes.inc()
