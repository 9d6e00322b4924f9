"""Plans in the console: a preview (dry run) stored and shown with its moves, reasons and scores;
approving runs exactly that plan; a viewer and a forged post are refused, nothing stored or run."""

from __future__ import annotations

from softudc.manager import plans
from tests.unit.console.test_views import Lab, csrf
from tests.unit.console.test_vmpage import placed


def test_preview_then_approve(lab: Lab) -> None:
    placed(lab)
    c = lab.client(lab.admin)
    page = c.get("/console/plans").text
    assert "No plan yet." in page and "Preview a rebalance" in page
    r = c.post("/console/plans", data={"csrf": csrf(page)})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/plans/p")
    pid = r.headers["location"].rsplit("/", 1)[1]
    shown = c.get(r.headers["location"]).text
    p = plans.view(lab.m, pid)
    assert f"{p['score_before']:.4f} → {p['score_after']:.4f}" in shown
    assert 'data-field="plan-state">planned<' in shown
    for mv in p["moves"]:
        assert f'data-plan-move="{mv["farm"]}/{mv["instance"]}"' in shown and mv["reason"] in shown
    assert f'data-plan="{pid}"' in c.get("/console/plans").text
    if p["moves"]:
        assert 'id="approve"' in shown
    r = c.post(f"/console/plans/{pid}/run", data={"csrf": csrf(shown)})
    assert r.status_code in (303, 409), r.text  # 409: the cluster moved since (the page says what)
    if r.status_code == 303:
        assert plans.view(lab.m, pid)["state"] != "planned"


def test_viewer_and_forged_posts_are_refused(lab: Lab) -> None:
    placed(lab)
    v = lab.client(lab.viewer)
    assert v.get("/console/plans").status_code == 403
    token = csrf(v.get("/console/").text)
    assert v.post("/console/plans", data={"csrf": token}).status_code == 403
    assert lab.client(lab.admin).post("/console/plans", data={"csrf": "forged"}).status_code == 403
    assert list(lab.m.store.objects(plans.KIND)) == []
    assert "/console/plans" not in v.get("/console/").text  # no link for a viewer
