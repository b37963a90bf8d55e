"""The zero-loss test: an application keeps writing through copy and cutover; afterwards every
acknowledged write is on the target, none was acknowledged on the source after the fence, and
verify is clean."""

from __future__ import annotations

import os

import psycopg
import pytest

from orgmove.copy import CopyOptions, run_copy
from orgmove.cutover import CutoverOptions, run_cutover
from orgmove.verify import VerifyOptions, run_verify
from tests.helpers import make_plan
from tests.workload import Workload
from tests.world import World

pytestmark = pytest.mark.slow


def _org1_project_and_user(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT p.id, p.creator_id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "WHERE n.organization_id = 1 ORDER BY p.id LIMIT 1").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_no_acknowledged_write_is_lost(world: World) -> None:
    plan, _ = make_plan(world.cells)
    project_id, user_id = _org1_project_and_user(world.dsn("cell-1"))

    def classify() -> tuple[str, str]:
        c = world.client.classify("organization_id", "1")
        return str(c.cell), str(c.org_state)

    load = Workload(org=1, classify=classify, dsns={"cell-1": world.dsn("cell-1"), "cell-2": world.dsn("cell-2")},
                    project_id=project_id, author_id=user_id, threads=4)
    load.start()
    try:
        os.environ["ORGMOVE_FAILPOINTS"] = "copy.before_commit=sleep(0.02)"  # a copy that takes a while
        try:
            run_copy(plan, world.config, CopyOptions(workers=2, chunk_rows=10))
        finally:
            os.environ.pop("ORGMOVE_FAILPOINTS", None)
        acks_before_cutover = len(load.acks)
        report = run_cutover(plan, world.config, CutoverOptions(max_freeze_s=60))
        assert report.committed
        # Keep writing on the new owner for a moment.
        deadline = len(load.acks) + 20
        import time

        t = time.monotonic()
        while len(load.acks) < deadline and time.monotonic() - t < 20:
            time.sleep(0.05)
    finally:
        load.stop()

    assert not load.errors, load.errors[:5]
    assert acks_before_cutover > 20
    on_source = [a for a in load.acks if a.cell == "cell-1"]
    on_target = [a for a in load.acks if a.cell == "cell-2"]
    assert on_source and on_target, "writes must happen on both sides of the flip"

    # None acknowledged on the source after the fence.
    with psycopg.connect(world.dsn("cell-1")) as conn:
        fence = conn.execute("SELECT fenced_at FROM orgmove.fences WHERE organization_id = '1'").fetchone()
    assert fence is not None
    assert max(a.at for a in on_source) < fence[0]

    # Every acknowledged write is on the target, with its last acknowledged value.
    expected = load.expected_state()
    with psycopg.connect(world.dsn("cell-2")) as conn:
        rows = dict(conn.execute("SELECT id, title FROM issues WHERE id = ANY(%s)", (list(expected),)).fetchall())
    lost = {i: t for i, t in expected.items() if t is not None and rows.get(i) != t}
    resurrected = [i for i, t in expected.items() if t is None and i in rows]
    assert not lost, f"{len(lost)} acknowledged writes missing on the target: {list(lost.items())[:5]}"
    assert not resurrected, f"deleted rows back on the target: {resurrected[:5]}"
    assert load.read_only_refusals >= 0

    # verify: the target equals the source as of the fence, except exactly the rows written on the
    # target after the flip (the source is frozen at the fence).
    report = run_verify(plan, world.config, VerifyOptions(workers=2, max_examples=100_000))
    differing = {t for t, tv in report.tables.items() if tv.mismatched_chunks}
    assert differing <= {"public.issues"}
    found = {int(e.key["id"]) for e in report.tables["public.issues"].examples}
    at_fence: dict[int, str | None] = {}
    for a in on_source:
        at_fence[a.issue_id] = a.title
    changed_after_flip = {a.issue_id for a in on_target
                          if at_fence.get(a.issue_id) != expected[a.issue_id]}
    assert found == changed_after_flip
