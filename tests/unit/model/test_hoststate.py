"""The manager <-> gatekeeper contract: every field typed, bounded and closed; every problem named;
older contract versions served, newer ones refused saying which side to upgrade; the naming rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softudc.model.contracttypes import MAX_MESSAGES
from softudc.model.hoststate import (
    CONTRACT_VERSION,
    JOB_STATES,
    MAX_PROBLEMS,
    MAX_TEXT,
    MAX_VMS,
    SEPARATOR,
    ContractError,
    DesiredState,
    HostReport,
    nic_mac,
    parse,
    problems_of,
    split_vm_name,
    vm_name,
)

# A report as a gatekeeper sends it, every field set.
REPORT: dict[str, Any] = {
    "contract": 2, "vcpus": 8, "memory_mib": 8192, "state": "ready", "migration_uri": "qemu+tcp://10.0.0.1/system",
    "underlay": "10.0.0.1", "vnets": [5, 7],
    "dataplane": {"workers": {"fwd-udp": "running"}, "restarts": 0, "healthy": True},
    "running": ["demo--web-0"], "prepared": ["demo--db-0"], "errors": ["vm.start demo--x-0: no room"], "notes": ["n"],
    "sizes": {"demo--web-0": [1, 128], "demo--old-0": [None, None]},
    "migrations": {"demo--web-1": {"attempt": "a1", "to": "h2", "state": "completed", "error": None,
                                   "started": 1.5, "ended": 3, "wall_ms": 1200, "data_total": 10,
                                   "data_processed": 10.0, "recovered": False}},
    "arrivals": {"demo--db-0": {"downtime_ms": 40, "total_ms": None, "data_total": 5, "error": None}},
    "departed": {"demo--web-1": {"attempt": "a1", "to": "h2", "ago_s": 1.5}},
}

# A wrong value for every field of the report, nested ones included: (path in the report, bad value).
WRONG: list[tuple[tuple[Any, ...], Any]] = [
    (("contract",), "2"), (("vcpus",), True), (("vcpus",), "8"), (("vcpus",), 0), (("memory_mib",), 1.5),
    (("state",), "happy"), (("migration_uri",), 5), (("underlay",), ["10.0.0.1"]), (("vnets",), [0]),
    (("vnets",), ["5"]), (("dataplane",), []), (("dataplane", "workers"), {"w": "asleep"}),
    (("dataplane", "restarts"), -1), (("dataplane", "healthy"), 1), (("running",), "demo--web-0"),
    (("running",), [3]), (("prepared",), [None]), (("errors",), [1]), (("notes",), {"a": "b"}),
    (("sizes", "demo--web-0"), [1]), (("sizes", "demo--web-0"), [0, 128]), (("sizes", "demo--web-0"), "1x128"),
    (("migrations", "demo--web-1", "attempt"), 1), (("migrations", "demo--web-1", "to"), None),
    (("migrations", "demo--web-1", "state"), "x"), (("migrations", "demo--web-1", "error"), 5),
    (("migrations", "demo--web-1", "started"), "now"), (("migrations", "demo--web-1", "ended"), True),
    (("migrations", "demo--web-1", "wall_ms"), float("nan")), (("migrations", "demo--web-1", "data_total"), "1"),
    (("migrations", "demo--web-1", "data_processed"), [1]), (("migrations", "demo--web-1", "recovered"), "yes"),
    (("arrivals", "demo--db-0", "downtime_ms"), "1"), (("arrivals", "demo--db-0", "total_ms"), {}),
    (("arrivals", "demo--db-0", "data_total"), False), (("arrivals", "demo--db-0", "error"), 1),
    (("departed", "demo--web-1", "attempt"), 2), (("departed", "demo--web-1", "to"), 3),
    (("departed", "demo--web-1", "ago_s"), "long"), (("migrations", "demo--web-1"), "x"),
]


def _with(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with the value at `path` replaced."""
    if len(path) == 1:
        return {**doc, path[0]: value}
    return {**doc, path[0]: _with(doc[path[0]], path[1:], value)}


def test_a_full_report_follows_the_contract_and_goes_back_on_the_wire_unchanged() -> None:
    assert parse(HostReport, REPORT).as_json() == REPORT


def test_a_report_that_says_nothing_is_a_contract_1_report() -> None:
    assert parse(HostReport, {}).contract == 1


@pytest.mark.adversarial
@pytest.mark.parametrize(("path", "value"), WRONG, ids=[".".join(p) + f"={v!r}" for p, v in WRONG])
def test_every_field_with_a_wrong_type_or_value_is_refused_and_named(path: tuple[Any, ...], value: Any) -> None:
    problems = problems_of(HostReport, _with(REPORT, path, value))
    assert len(problems) == 1, problems
    # Named: an entry of a list by its field, anything else by its full path.
    named = path[0] if path[0] in ("running", "prepared", "errors", "notes", "vnets") else ".".join(path)
    assert problems[0].startswith(named.split(".")[0]) and (named in problems[0] or f"{path[0]}[" in problems[0] or
                                                           f"{path[0]}: " in problems[0]), problems


@pytest.mark.adversarial
@pytest.mark.parametrize("path", [(), ("dataplane",), ("migrations", "demo--web-1"), ("arrivals", "demo--db-0"),
                                  ("departed", "demo--web-1")])
def test_an_unknown_field_is_refused_at_every_level_and_says_to_upgrade_the_manager(path: tuple[Any, ...]) -> None:
    inner = REPORT
    for p in path:
        inner = inner[p]
    problems = problems_of(HostReport, _with(REPORT, path, {**inner, "colour": "red"}) if path
                           else {**REPORT, "colour": "red"})
    where = ".".join((*path, "colour"))
    assert problems == [f"{where}: unknown field in contract 2 (a newer gatekeeper's field? upgrade the managers "
                        "first)"]


def test_the_problems_are_named_all_at_once() -> None:
    bad = {"vcpus": "8", "memory_mib": 0, "sizes": {"a--b-0": [1], "a--c-0": [1, 2, 3]},
           "migrations": {"a--b-0": {"attempt": 1, "to": 2, "state": "gone"}}, "colour": 1}
    problems = problems_of(HostReport, bad)
    assert problems == [
        "vcpus: expected int, got str", "memory_mib: 0 must be positive",
        "sizes.a--b-0: [1], expected [vCPUs, memory MiB] (positive integers or null)",
        "sizes.a--c-0: [1, 2, 3], expected [vCPUs, memory MiB] (positive integers or null)",
        "migrations.a--b-0.attempt: 1, expected str", "migrations.a--b-0.to: 2, expected str",
        f"migrations.a--b-0.state: 'gone' is not one of {', '.join(repr(s) for s in JOB_STATES[:-1])} or "
        f"{JOB_STATES[-1]!r}",
        "colour: unknown field in contract 1 (a newer gatekeeper's field? upgrade the managers first)"]


@pytest.mark.adversarial
def test_explicit_nulls_are_refused_where_a_field_may_only_be_left_out() -> None:
    assert problems_of(HostReport, {"vcpus": None, "running": None}) == [
        "vcpus: null is not allowed (leave the field out)", "running: null is not allowed (leave the field out)"]


@pytest.mark.adversarial
def test_problems_are_capped() -> None:
    problems = problems_of(HostReport, {"sizes": {f"a--b-{i}": [0] for i in range(500)}})
    assert len(problems) == MAX_PROBLEMS and problems[0].startswith("sizes.a--b-0:")


@pytest.mark.adversarial
@pytest.mark.parametrize(("field", "value", "said"), [
    ("running", [f"a--b-{i}" for i in range(MAX_VMS + 1)], f"running: {MAX_VMS + 1} entries, at most {MAX_VMS}"),
    ("sizes", {f"a--b-{i}": [1, 1] for i in range(MAX_VMS + 1)},
     f"sizes: more than {MAX_VMS} entries, at most {MAX_VMS}"),
    ("errors", ["e"] * (MAX_MESSAGES + 1), f"errors: {MAX_MESSAGES + 1} entries"),
    ("errors", ["e" * (MAX_TEXT + 1)], f"errors.0: {MAX_TEXT + 1} characters"),
    ("running", ["x" * 256], "running.0: 256 characters"),
    ("running", [""], "running.0: 0 characters"),
    ("migration_uri", "q" * 2000, "migration_uri: 2000 characters"),
])
def test_a_report_is_bounded(field: str, value: Any, said: str) -> None:
    problems = problems_of(HostReport, {field: value})
    assert len(problems) == 1 and problems[0].startswith(said), problems


def test_a_contract_1_report_is_served_and_a_newer_one_is_refused_saying_to_upgrade_the_manager() -> None:
    old = {k: v for k, v in REPORT.items() if k != "contract"}  # what today's gatekeepers send
    assert parse(HostReport, old).contract == 1
    assert parse(HostReport, {**old, "contract": 1}).contract == 1
    with pytest.raises(ContractError) as e:
        parse(HostReport, {**old, "contract": CONTRACT_VERSION + 1, "something_new": {}})
    assert e.value.problems == [f"contract: this gatekeeper speaks contract {CONTRACT_VERSION + 1}, this manager "
                                "only 1, 2, 3: upgrade the managers first, then the gatekeepers"]
    assert "no longer served" in problems_of(HostReport, {"contract": 0})[0]


@pytest.mark.adversarial
@pytest.mark.parametrize("data", [[], "report", 3, None])
def test_a_report_that_is_no_object_is_refused(data: Any) -> None:
    assert problems_of(HostReport, data) == [f"expected a JSON object, got {type(data).__name__}"]


# --- the desired state --------------------------------------------------------------------------

DESIRED: dict[str, Any] = {
    "contract": 2, "etag": "0123456789abcdef",
    "vnets": [{"id": 5, "farm": "demo", "name": "front", "security": "conf", "mtu": None,
               "keys": {"send_epoch": 3, "secrets": {"3": "ab" * 32}}, "members": ["10.0.0.1", "10.0.0.2"]}],
    "vms": [{"name": "demo--web-0", "vcpus": 1, "memory_mib": 128,
             "nics": [{"vnet": 5, "mac": nic_mac("demo", "web-0", "front"), "ip": "10.1.0.2/24",
                       "peers": ["10.1.0.3"]}]},
            {"name": "demo--db-0", "vcpus": 2, "memory_mib": 256, "nics": [],
             "migrate_to": {"host": "h2", "uri": "qemu+tcp://10.0.0.2/system", "attempt": "a1", "downtime_ms": 0}},
            {"name": "demo--db-1", "vcpus": 2, "memory_mib": 256, "nics": [], "incoming": True},
            {"name": "demo--db-2", "vcpus": 2, "memory_mib": 256, "nics": [], "restart_departed": "a0"}],
}


def test_a_desired_state_round_trips() -> None:
    assert parse(DesiredState, DESIRED).as_json() == DESIRED


def test_a_contract_1_gatekeeper_gets_exactly_what_it_always_got() -> None:
    state = parse(DesiredState, DESIRED)
    assert state.for_contract(1) == {k: v for k, v in DESIRED.items() if k != "contract"}
    assert state.for_contract(2)["contract"] == 2


@pytest.mark.adversarial
@pytest.mark.parametrize(("path", "value", "said"), [
    (("vnets", 0, "id"), 0, "vnets.0.id: 0 must be positive"),
    (("vnets", 0, "security"), "secret", "vnets.0.security: 'secret' is not one of"),
    (("vnets", 0, "mtu"), "1400", "vnets.0.mtu: '1400', expected int"),
    (("vnets", 0, "keys", "secrets"), {"x": "ab"}, "vnets.0.keys.secrets.x.[key]"),
    (("vnets", 0, "keys", "secrets"), {"3": "not hex"}, "vnets.0.keys.secrets.3: 'not hex'"),
    (("vnets", 0, "members"), "10.0.0.1", "vnets.0.members: '10.0.0.1', expected list"),
    (("vms", 0, "vcpus"), True, "vms.0.vcpus: True, expected int"),
    (("vms", 0, "nics", 0, "mac"), "52:54:00:zz:00:01", "vms.0.nics.0.mac"),
    (("vms", 0, "nics", 0, "peers"), [5], "vms.0.nics.0.peers: every entry must be a str, not peers[0]"),
    (("vms", 1, "migrate_to", "attempt"), 1, "vms.1.migrate_to.attempt: 1, expected str"),
    (("vms", 1, "migrate_to"), {"host": "h2"}, "vms.1.migrate_to.uri: missing"),
    (("vms", 2, "incoming"), "yes", "vms.2.incoming: 'yes', expected bool"),
    (("vms", 0, "handover"), {}, "vms.0.handover: unknown field in contract 2 (a newer manager's field? upgrade "
                                 "this gatekeeper)"),
])
def test_a_wrong_desired_state_is_refused_with_each_problem_named(path: tuple[Any, ...], value: Any,
                                                                  said: str) -> None:
    problems = problems_of(DesiredState, _set(DESIRED, path, value))
    assert len(problems) >= 1 and problems[0].startswith(said), problems


def test_a_desired_state_of_a_newer_manager_is_refused_saying_to_upgrade_the_gatekeeper() -> None:
    with pytest.raises(ContractError) as e:
        parse(DesiredState, {**DESIRED, "contract": CONTRACT_VERSION + 1})
    assert "upgrade this gatekeeper" in str(e.value)


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`doc` (lists and dicts) with the value at `path` set, the original untouched."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, list):
        return [_set(v, rest, value) if i == head else v for i, v in enumerate(doc)]
    return {**doc, head: _set(doc.get(head), rest, value) if rest else value}


# --- the naming rule ------------------------------------------------------------------------------

_part = st.text(st.characters(codec="utf-8", exclude_characters="-"), min_size=1, max_size=20) | \
    st.from_regex(r"^[a-z]([-a-z0-9]{0,10}[a-z0-9])?$", fullmatch=True).filter(lambda s: SEPARATOR not in s)


@given(_part, _part)
def test_a_vm_name_splits_back_into_its_farm_and_instance(farm: str, instance: str) -> None:
    assert split_vm_name(vm_name(farm, instance)) == (farm, instance)


@given(st.text(max_size=30))
def test_split_vm_name_takes_only_names_vm_name_makes(name: str) -> None:
    parts = split_vm_name(name)
    assert parts is None or vm_name(*parts) == name


@pytest.mark.parametrize("name", ["plain", "a--b--c", "--b", "a--", "a-b"])
def test_names_with_no_single_separator_are_not_a_farms_vm(name: str) -> None:
    assert split_vm_name(name) is None


@given(_part, _part, _part)
def test_a_nic_mac_is_stable_and_locally_administered(farm: str, instance: str, vnet: str) -> None:
    mac = nic_mac(farm, instance, vnet)
    assert mac == nic_mac(farm, instance, vnet) and mac.startswith("52:54:00:")
    assert parse(DesiredState, {"vms": [{"name": "a--b", "vcpus": 1, "memory_mib": 1,
                                         "nics": [{"vnet": 1, "mac": mac}]}]}).vms[0].nics[0].mac == mac


@pytest.mark.adversarial
@pytest.mark.parametrize(("field", "value"), [("vcpus", (1 << 16) + 1), ("memory_mib", (1 << 32) + 1),
                                             ("vcpus", 10**30)])
def test_a_host_capacity_beyond_any_machine_is_refused_naming_the_field(field: str, value: int) -> None:
    problems = problems_of(HostReport, {field: value})
    assert len(problems) == 1 and problems[0].startswith(f"{field}: ") and "less than or equal" in problems[0]
    assert problems_of(HostReport, {field: 1 << 16}) == []  # the largest vcpus allowed, and memory well inside
