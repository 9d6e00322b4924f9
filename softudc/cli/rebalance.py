"""`softudc rebalance` (issue 12 item 3; softudc/manager/plans.py): plans you preview, then run.

    softudc rebalance --dry-run [-o json]   compute and store a plan; print each move with its reason and the
                                            score before/after (nothing moves)
    softudc rebalance [--plan ID]           run the plan the dry run printed (refused if the cluster changed
                                            since); without --plan: compute one and run it; follow its progress
    softudc rebalance --auto INTERVAL       every INTERVAL s: plan, and run it when it gains at least --min-gain
    softudc get plans                       the stored plans (`plan_rows`)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from softudc.cli.connect import Api, add_arguments, connect
from softudc.cli.errors import CliError, ok
from softudc.cli.follow import follow_progress

LIMITS = ("max_per_source", "max_per_destination", "max_per_step", "max_moves")


def describe(p: dict[str, Any]) -> str:
    """A plan as text: its id and score, then one line per move (step, VM, hosts, reason)."""
    b, a = p.get("before", {}), p.get("after", {})
    lines = [f"plan {p['id']} ({p.get('state', 'planned')}): {len(p['moves'])} move(s), score "
             f"{p['score_before']:.4f} -> {p['score_after']:.4f} (cpu spread {b.get('spread_cpu', 0):.3f} -> "
             f"{a.get('spread_cpu', 0):.3f}, memory {b.get('spread_mem', 0):.3f} -> {a.get('spread_mem', 0):.3f})"]
    for mv in p["moves"]:
        state = f" [{mv['state']}]" if mv.get("state", "pending") != "pending" else ""
        lines.append(f"  step {mv['step']}: {mv['vm']} {mv['source']} -> {mv['destination']}{state}: {mv['reason']}")
    lines += [f"  stuck: {vm}: {why}" for vm, why in sorted(p.get("stuck", {}).items())]
    return "\n".join(lines)


def _progress(p: dict[str, Any]) -> str:
    c = p["progress"]
    return (f"plan {p['id']}: {p['state']}, {c['done']}/{len(p['moves'])} done, {c['moving']} moving"
            + (f", {c['failed']} failed" if c["failed"] else ""))


def follow(api: Api, p: dict[str, Any], timeout: float, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll a running plan until it is done or failed; a CliError after `timeout` s."""
    return follow_progress(p, lambda: ok(*api.call("GET", f"/v1/plans/{p['id']}")),
                           lambda q: bool(q["state"] == "running"), _progress, timeout,
                           lambda q: f" (the plan goes on: `softudc rebalance --plan {q['id']}` follows it again)",
                           clock, sleep)


def _body(a: argparse.Namespace, dry_run: bool) -> str:
    body: dict[str, Any] = {"kind": "rebalance", "dry_run": dry_run}
    body.update({k: getattr(a, k) for k in LIMITS if getattr(a, k, None) is not None})
    if a.cooldown is not None:
        body["cooldown_s"] = a.cooldown
    return json.dumps(body)


def _run(api: Api, a: argparse.Namespace, pid: str) -> dict[str, Any]:
    p = follow(api, ok(*api.call("POST", f"/v1/plans/{pid}/run", "{}")), a.timeout)
    print(_progress(p))
    if p["state"] == "failed":
        raise CliError(f"plan {pid} stopped at a failed move: {p.get('reason')}")
    return p


def once(api: Api, a: argparse.Namespace) -> dict[str, Any]:
    """One dry run, or one run (of --plan, or of a plan computed now)."""
    if a.dry_run or a.plan is None:
        p: dict[str, Any] = ok(*api.call("POST", "/v1/plans", _body(a, True)))
        if a.dry_run or a.output == "json":
            print(json.dumps(p, indent=2) if a.output == "json" else describe(p))
        if a.dry_run:
            return p
        if a.output != "json":
            print(describe(p))
        if not p["moves"]:
            return p
        return _run(api, a, p["id"])
    return _run(api, a, a.plan)


def auto(api: Api, a: argparse.Namespace, rounds: int | None = None,
         sleep: Callable[[float], None] = time.sleep) -> None:
    """Every a.auto seconds: plan; run it when it lowers the score by at least a.min_gain."""
    done = 0
    while rounds is None or done < rounds:
        p = ok(*api.call("POST", "/v1/plans", _body(a, True)))
        gain = p["score_before"] - p["score_after"]
        if p["moves"] and gain >= a.min_gain:
            print(describe(p))
            _run(api, a, p["id"])
        else:
            print(f"plan {p['id']}: {len(p['moves'])} move(s), gain {gain:.4f} < {a.min_gain:g}: not run",
                  file=sys.stderr)
        done += 1
        if rounds is None or done < rounds:
            sleep(a.auto)


def cmd_rebalance(a: argparse.Namespace) -> None:
    if a.dry_run and a.plan:
        raise CliError("--dry-run computes a new plan; --plan ID runs a stored one: give one of them")
    api = connect(a)
    if a.auto is not None:
        if a.auto <= 0:
            raise CliError(f"--auto {a.auto:g}: the interval must be > 0 seconds")
        auto(api, a)
        return
    once(api, a)


def plan_rows(api: Api) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The rows of `softudc get plans` (newest first), its columns and its `-o wide` columns."""
    rows = [{"id": p["id"], "state": p["state"], "moves": p["moves"], "done": p["progress"]["done"],
             "score": f"{p['score_before']:.4f} -> {p['score_after']:.4f}", "by": p.get("by", ""),
             "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(p.get("created", 0)))),
             "fingerprint": p.get("fingerprint", ""), "reason": p.get("reason", "")}
            for p in ok(*api.call("GET", "/v1/plans"))]
    return rows, ["id", "state", "moves", "done", "score", "created"], ["by", "fingerprint", "reason"]


def add_rebalance_parser(sub: Any) -> None:
    r = sub.add_parser("rebalance", help="rebalance plans: --dry-run shows one, then run it (--plan ID)")
    r.add_argument("--dry-run", action="store_true", help="compute and print a plan; nothing moves")
    r.add_argument("--plan", help="run this stored plan (refused if the cluster changed since it was computed)")
    r.add_argument("--auto", type=float, metavar="INTERVAL", help="loop: plan every INTERVAL s, run when worth it")
    r.add_argument("--min-gain", type=float, default=0.01, help="--auto: the least score drop worth running")
    r.add_argument("--cooldown", type=float, help="a VM moved less than this many s ago stays (default 600)")
    for k in LIMITS:
        r.add_argument(f"--{k.replace('_', '-')}", dest=k, type=int)
    r.add_argument("--timeout", type=float, default=900, help="how long to follow a running plan")
    r.add_argument("-o", "--output", choices=["text", "json"], default="text")
    add_arguments(r)
    r.set_defaults(fn=cmd_rebalance)
