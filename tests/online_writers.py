"""Plain SQL writers for the online-move tests: they never call ``orgmove.assert_writable``.

Each operation runs in its own transaction on the source Cell and touches org 1 (the moving org)
and org 3 (which stays): inserts of issues with out-of-line TOAST descriptions, title updates
that leave the TOASTed value unchanged, deletes, duplicate rows in a table without a key
(``web_hook_logs_archive``), a new project in the org with notes (a join-path key set grows), and
notes moved into and out of the org.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

import psycopg

BIG = "SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 200) g"


def org_project(conn: psycopg.Connection[object], org: int) -> int:
    row = conn.execute(
        "SELECT min(p.id) FROM projects p JOIN namespaces n ON n.id = p.namespace_id "
        "WHERE n.organization_id = %s", (org,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def one_write(conn: psycopg.Connection[object], rng: random.Random, org: int, step: int) -> None:
    project = org_project(conn, org)
    op = step % 7
    with conn.transaction():
        if op == 0:
            conn.execute(
                f"INSERT INTO issues (project_id, iid, title, description, state, created_at) "
                f"SELECT %s, 100000 + %s, 'online ' || %s, ({BIG}), 1, now()", (project, step, step))
        elif op == 1:
            conn.execute("UPDATE issues SET title = title || '+' WHERE id = (SELECT max(id) FROM issues "
                         "WHERE project_id = %s AND description IS NOT NULL)", (project,))
        elif op == 2:
            conn.execute("DELETE FROM issues WHERE id = (SELECT min(id) FROM issues WHERE project_id = %s "
                         "AND title LIKE 'online %%')", (project,))
        elif op == 3:
            for _ in range(2):  # identical rows: a table without a key may hold duplicates
                conn.execute("INSERT INTO web_hook_logs_archive (project_id, url, response_status, created_at) "
                             "VALUES (%s, 'https://hook.invalid/' || %s, 200, '2026-01-01')", (project, step))
        elif op == 4:
            conn.execute("INSERT INTO notes (noteable_type, noteable_id, project_id, note, created_at) "
                         "SELECT 'Issue', max(id), %s, 'note ' || %s, now() FROM issues WHERE project_id = %s",
                         (project, step, project))
        elif op == 5:
            conn.execute("UPDATE notes SET note = note || '!' WHERE id = (SELECT max(id) FROM notes "
                         "WHERE project_id = %s)", (project,))
        else:
            conn.execute("DELETE FROM web_hook_logs_archive WHERE ctid = (SELECT ctid FROM web_hook_logs_archive "
                         "WHERE project_id = %s LIMIT 1)", (project,))


def new_project_with_notes(conn: psycopg.Connection[object], org: int, tag: str) -> int:
    """A project created in the org after the snapshot, then its notes: the key set must grow."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO projects (namespace_id, creator_id, name, path, visibility_level, "
            "archived, created_at) SELECT n.id, p.creator_id, %s, %s, p.visibility_level, false, now() "
            "FROM namespaces n JOIN projects p ON p.namespace_id = n.id WHERE n.organization_id = %s "
            "ORDER BY p.id LIMIT 1 RETURNING id", (tag, tag, org)).fetchone()
        assert row is not None
    with conn.transaction():
        conn.execute("INSERT INTO notes (noteable_type, noteable_id, project_id, note, created_at) "
                     "VALUES ('Issue', 0, %s, 'on a new project', now())", (row[0],))
    return int(row[0])


def move_note(conn: psycopg.Connection[object], from_org: int, to_org: int) -> None:
    """A row updated from one org into another (on the target: an insert, or a delete)."""
    with conn.transaction():
        conn.execute("UPDATE notes SET project_id = %s WHERE id = (SELECT max(id) FROM notes WHERE project_id = %s)",
                     (org_project(conn, to_org), org_project(conn, from_org)))


@dataclass
class Writers:
    dsn: str
    orgs: tuple[int, ...] = (1, 3)
    steps: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writers:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                try:
                    one_write(conn, rng, self.orgs[self.steps % len(self.orgs)], self.steps)
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self.steps += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
