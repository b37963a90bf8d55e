"""The gate fence holds for every writer (ADR 0008): writers that never call assert_writable, that
ignore routing and keep writing to the source, through copy, verify and cutover. Every write the
source acknowledged is on the target after the flip, or its writer got an error; verify finds no
difference; another organization's writer on the same Cell is never refused nor held up."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
import pytest

from orgmove import fence
from orgmove.copy import CopyOptions, run_copy
from orgmove.cutover import CutoverOptions, run_cutover
from orgmove.verify import VerifyOptions, run_verify
from tests.helpers import make_plan
from tests.world import World

pytestmark = pytest.mark.slow

READ_ONLY = "25006"
_IIDS = itertools.count(9_000_000)  # issues are unique on (project_id, iid)


def _project_and_user(dsn: str, org: int) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT p.id, p.creator_id FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
            "WHERE n.organization_id = %s AND p.creator_id IS NOT NULL ORDER BY p.id LIMIT 1",
            (org,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _issues_of_org(dsn: str, org: int, n: int) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT i.id FROM issues i JOIN projects p ON p.id = i.project_id "
            "JOIN namespaces n ON n.id = p.namespace_id WHERE n.organization_id = %s "
            "ORDER BY i.id LIMIT %s", (org, n)).fetchall()
    return [int(r[0]) for r in rows]


@dataclass
class RogueWriters:
    """Writers on the source only, none cooperating: each records what the source acknowledged
    (table, id -> last value, None when deleted) and the refusals it got."""

    dsn: str
    project_id: int
    author_id: int
    other_org_project_id: int
    into_org_issues: list[int]
    acked: dict[tuple[str, int], str | None] = field(default_factory=dict)
    ack_times: list[tuple[datetime, str, object]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    other_org_latencies: list[float] = field(default_factory=list)
    other_org_errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._crud, self._notes, self._long_transaction, self._move_into_org,
                       self._other_org):
            t = threading.Thread(target=target, daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _ack(self, writer: str, writes: dict[tuple[str, int], str | None], at: datetime) -> None:
        with self._lock:
            self.acked.update(writes)
            self.ack_times.append((at, writer, writes))

    def _refused(self, writer: str, exc: psycopg.Error) -> None:
        with self._lock:
            if exc.sqlstate == READ_ONLY:
                self.refusals[writer] = self.refusals.get(writer, 0) + 1
            else:
                self.errors.append(f"{writer}: {exc.sqlstate} {exc}")

    def _loop(self, writer: str, body: object, pause_s: float = 0.005) -> None:
        n = 0
        with psycopg.connect(self.dsn) as conn:
            while not self._stop.is_set():
                n += 1
                try:
                    with conn.transaction():
                        writes = body(conn, n)  # type: ignore[operator]
                        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                except psycopg.Error as exc:
                    self._refused(writer, exc)
                    time.sleep(0.01)
                    continue
                if writes:
                    self._ack(writer, writes, at)
                time.sleep(pause_s)

    def _insert_issue(self, conn: psycopg.Connection[object], title: str) -> int:
        row = conn.execute(
            "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
            "VALUES (%s, %s, %s, %s, 1, now()) RETURNING id",
            (self.project_id, self.author_id, next(_IIDS), title)).fetchone()
        assert row is not None
        return int(row[0])

    def _crud(self) -> None:
        """Plain INSERT, UPDATE and DELETE of the org's issues (a join path: issues -> projects
        -> namespaces -> organizations)."""
        mine: list[int] = []

        def body(conn: psycopg.Connection[object], n: int) -> dict[tuple[str, int], str | None]:
            if not mine or n % 3 == 0:
                title = f"crud-{n}"
                issue = self._insert_issue(conn, title)
                mine.append(issue)
                return {("issues", issue): title}
            if n % 3 == 1:
                issue = mine[n % len(mine)]
                conn.execute("UPDATE issues SET title = %s WHERE id = %s", (f"crud-{n}-u", issue))
                return {("issues", issue): f"crud-{n}-u"}
            issue = mine.pop(0)
            conn.execute("DELETE FROM issues WHERE id = %s", (issue,))
            return {("issues", issue): None}

        self._loop("crud", body)

    def _notes(self) -> None:
        """Notes on the org's issues: a polymorphic join path."""
        issue_holder: list[int] = []

        def body(conn: psycopg.Connection[object], n: int) -> dict[tuple[str, int], str | None]:
            if not issue_holder:
                issue_holder.append(self._insert_issue(conn, "notes-parent"))
                return {("issues", issue_holder[0]): "notes-parent"}
            row = conn.execute(
                "INSERT INTO notes (noteable_type, noteable_id, project_id, author_id, note, created_at) "
                "VALUES ('Issue', %s, %s, %s, %s, now()) RETURNING id",
                (issue_holder[0], self.project_id, self.author_id, f"note-{n}")).fetchone()
            assert row is not None
            return {("notes", int(row[0])): f"note-{n}"}

        self._loop("notes", body)

    def _long_transaction(self) -> None:
        """Transactions held open for a while between their first and their last write: one is
        in flight when the fence comes."""
        def body(conn: psycopg.Connection[object], n: int) -> dict[tuple[str, int], str | None]:
            first = self._insert_issue(conn, f"long-{n}-a")
            time.sleep(0.8)
            second = self._insert_issue(conn, f"long-{n}-b")
            return {("issues", first): f"long-{n}-a", ("issues", second): f"long-{n}-b"}

        self._loop("long", body)

    def _move_into_org(self) -> None:
        """UPDATEs that move another organization's issue into the moving org: an issue of org 3
        (not gated) is moved into org 1 by the next transaction (gated by its new version)."""
        def body(conn: psycopg.Connection[object], n: int) -> dict[tuple[str, int], str | None]:
            if not self.into_org_issues:
                row = conn.execute(
                    "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                    "VALUES (%s, NULL, %s, 'org3-to-move', 1, now()) RETURNING id",
                    (self.other_org_project_id, next(_IIDS))).fetchone()
                assert row is not None
                self.into_org_issues.append(int(row[0]))
                return {}
            issue = self.into_org_issues[0]
            title = f"moved-in-{n}"
            conn.execute("UPDATE issues SET project_id = %s, iid = %s, title = %s WHERE id = %s",
                         (self.project_id, next(_IIDS), title, issue))
            self.into_org_issues.pop(0)
            return {("issues", issue): title}

        self._loop("into-org", body, pause_s=0.1)

    def _other_org(self) -> None:
        """Org 3 lives on the same source Cell and must never wait for org 1's fence."""
        n = 0
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                n += 1
                t = time.monotonic()
                try:
                    conn.execute(
                        "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                        "VALUES (%s, NULL, %s, %s, 1, now())",
                        (self.other_org_project_id, 8_000_000 + n, f"org3-{n}"))
                except psycopg.Error as exc:
                    self.other_org_errors.append(str(exc))
                self.other_org_latencies.append(time.monotonic() - t)
                time.sleep(0.01)


def test_writers_that_never_cooperate_lose_nothing(world: World) -> None:
    plan, _ = make_plan(world.cells)
    source, target = world.dsn("cell-1"), world.dsn("cell-2")
    project_id, user_id = _project_and_user(source, 1)
    org3_project, _ = _project_and_user(source, 3)
    writers = RogueWriters(source, project_id, user_id, org3_project, _issues_of_org(source, 3, 3))
    writers.start()
    try:
        time.sleep(0.3)
        run_copy(plan, world.config, CopyOptions(workers=2, chunk_rows=20))
        with psycopg.connect(source) as conn:
            assert fence.gate_installed(conn, plan)
        time.sleep(0.5)
        run_verify(plan, world.config, VerifyOptions(workers=2))  # differs: the writers write
        report = run_cutover(plan, world.config, CutoverOptions(max_freeze_s=60))
        assert report.committed
        time.sleep(1.5)  # the writers keep hammering the source after the flip
    finally:
        writers.stop()

    assert not writers.errors, writers.errors[:5]
    with psycopg.connect(source) as conn:
        row = conn.execute("SELECT fenced_at FROM orgmove.fences WHERE organization_id = '1'").fetchone()
    assert row is not None
    fenced_at = row[0]
    # The source acknowledged writes on both sides of the move's start, none after the fence,
    # and refused the rest, to every kind of writer.
    assert len(writers.acked) > 30
    late = [a for a in writers.ack_times if a[0] >= fenced_at]
    assert not late, late[:5]
    for writer in ("crud", "notes", "long", "into-org"):
        assert writers.refusals.get(writer, 0) > 0, (writer, writers.refusals)

    # Every acknowledged write is on the target with its last acknowledged value.
    with psycopg.connect(target) as conn:
        issues = dict(conn.execute("SELECT id, title FROM issues WHERE id = ANY(%s)",
                                   ([i for t, i in writers.acked if t == "issues"],)).fetchall())
        notes = dict(conn.execute("SELECT id, note FROM notes WHERE id = ANY(%s)",
                                  ([i for t, i in writers.acked if t == "notes"],)).fetchall())
    on_target = {("issues", i): v for i, v in issues.items()} | {("notes", i): v for i, v in notes.items()}
    lost = {k: v for k, v in writers.acked.items() if v is not None and on_target.get(k) != v}
    resurrected = [k for k, v in writers.acked.items() if v is None and k in on_target]
    assert not lost, f"{len(lost)} acknowledged writes missing on the target: {list(lost.items())[:5]}"
    assert not resurrected, resurrected[:5]
    moved_in = [k for k, v in writers.acked.items() if v and v.startswith("moved-in-")]
    assert moved_in, "an issue moved into the org before the fence"

    # Nothing differs: the fence froze the source at the state the target got.
    verify = run_verify(plan, world.config, VerifyOptions(workers=2))
    assert verify.equal, {t: v.mismatched_chunks for t, v in verify.tables.items()}

    # Org 3 kept writing on the source throughout and was never refused nor held up.
    assert not writers.other_org_errors, writers.other_org_errors[:3]
    assert len(writers.other_org_latencies) > 50
    fence_s = next(s["seconds"] for s in report.steps if s["step"] == "fence")
    assert max(writers.other_org_latencies) < fence_s + 0.5


def test_a_transaction_open_across_the_fence_commits_before_it_or_fails(world: World) -> None:
    """A writer holding the org's shared lock makes the fence wait (the drain); past the drain
    timeout it is terminated and nothing of it commits. New writers fail at once meanwhile."""
    plan, _ = make_plan(world.cells)
    source = world.dsn("cell-1")
    project_id, user_id = _project_and_user(source, 1)
    with psycopg.connect(source, autocommit=True) as admin:
        fence.install_gate(admin, plan)
    holder = psycopg.connect(source)
    holder.execute("INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                   "VALUES (%s, %s, 9100001, 'held-open', 1, now())", (project_id, user_id))
    outcome: dict[str, object] = {}

    def take_fence() -> None:
        with psycopg.connect(source, autocommit=True) as conn:
            t = time.monotonic()
            outcome["fenced_at"] = fence.install_source_fence(conn, "1", plan.move_key, 1, 0.5, 60)
            outcome["seconds"] = time.monotonic() - t

    fencer = threading.Thread(target=take_fence)
    fencer.start()
    time.sleep(0.2)
    # While the fencer waits, a new writer of org 1 is refused at once, not queued.
    with psycopg.connect(source) as other:
        t = time.monotonic()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            other.execute("UPDATE issues SET title = 'x' WHERE project_id = %s", (project_id,))
        assert time.monotonic() - t < 0.3
    fencer.join(10)
    assert "fenced_at" in outcome, "the fence was not taken"
    with pytest.raises(psycopg.OperationalError):
        holder.execute("INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                       "VALUES (%s, %s, 9100002, 'held-open-2', 1, now())", (project_id, user_id))
        holder.commit()
    holder.close()
    with psycopg.connect(source) as conn:
        assert conn.execute("SELECT count(*) FROM issues WHERE title LIKE 'held-open%'").fetchone() == (0,)
        # After the fence: refused, in replica mode too (ENABLE ALWAYS).
        conn.execute("SET session_replication_role = replica")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM issues WHERE project_id = %s", (project_id,))
        conn.rollback()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("TRUNCATE notes")
        conn.rollback()
    # Lifted: writes go through again.
    with psycopg.connect(source, autocommit=True) as conn:
        fence.lift_fence(conn, "1")
        conn.execute("UPDATE issues SET title = title WHERE project_id = %s", (project_id,))


def test_repeatable_read_snapshot_older_than_the_fence_is_refused(world: World) -> None:
    """The fence row is invisible to a snapshot taken before it; the fence's transaction id
    (recorded outside MVCC) tells the gate, which refuses with a serialization failure."""
    plan, _ = make_plan(world.cells)
    source = world.dsn("cell-1")
    project_id, user_id = _project_and_user(source, 1)
    org3_project, _ = _project_and_user(source, 3)
    with psycopg.connect(source, autocommit=True) as admin:
        fence.install_gate(admin, plan)
    with psycopg.connect(source) as rr:
        rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rr.execute("SELECT count(*) FROM issues").fetchone()  # the snapshot is taken here
        with psycopg.connect(source, autocommit=True) as conn:
            fence.install_source_fence(conn, "1", plan.move_key, 1, 5, 60)
        # Other orgs' rows are not gated.
        rr.execute("INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                   "VALUES (%s, NULL, 9100003, 'org3 in rr', 1, now())", (org3_project,))
        with pytest.raises(psycopg.errors.SerializationFailure):
            rr.execute("INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                       "VALUES (%s, %s, 9100004, 'stale snapshot', 1, now())", (project_id, user_id))
        rr.rollback()
        # A new REPEATABLE READ transaction sees the fence row itself.
        rr.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            rr.execute("UPDATE issues SET title = 'y' WHERE project_id = %s", (project_id,))
