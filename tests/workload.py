"""A writer workload standing in for the application during a move.

Each writer asks the Topology Service (classify) which cell owns the organization, writes there
inside a transaction that calls ``orgmove.assert_writable`` first, retries when the organization is
read-only, and logs every acknowledged insert, update and delete (with the cell and the server
time of the write). Each writer touches only rows it inserted, so the last acknowledged value of
every row is known exactly.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

READ_ONLY = "25006"


@dataclass
class Ack:
    op: str
    issue_id: int
    title: str | None
    cell: str
    at: datetime


@dataclass
class Workload:
    org: int
    classify: Callable[[], tuple[str, str]]  # -> (owning cell, org state)
    dsns: dict[str, str]
    project_id: int
    author_id: int
    threads: int = 4
    slow_writer_hold_s: float = 0.4
    # A router caches its routing answer; classifying before every transaction (an HTTP round trip
    # to the Topology Service in the same process) capped the bench writers at ~23 txn/s. A stale
    # answer is safe: the fence refuses the write (read_only) and the cache is dropped.
    classify_ttl_s: float = 0.0
    pause_s: float = 0.005
    acks: list[Ack] = field(default_factory=list)
    read_only_refusals: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i, i == 0), daemon=True, name=f"writer-{i}")
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)

    def _run(self, writer: int, slow: bool) -> None:
        rng = random.Random(writer)
        mine: dict[int, str] = {}
        counter = 0
        conns: dict[str, psycopg.Connection[object]] = {}
        route: tuple[str, str] | None = None
        routed_at = 0.0
        try:
            while not self._stop.is_set():
                if route is None or time.monotonic() - routed_at > self.classify_ttl_s:
                    try:
                        route = self.classify()
                        routed_at = time.monotonic()
                    except Exception as exc:  # the router would retry too
                        self.errors.append(f"classify: {exc}")
                        time.sleep(0.05)
                        continue
                cell, org_state = route
                if org_state != "active":
                    route = None
                    time.sleep(0.02)
                    continue
                conn = conns.get(cell)
                if conn is None or conn.closed:
                    conn = conns[cell] = psycopg.connect(self.dsns[cell], autocommit=False)
                op = "insert" if not mine or rng.random() < 0.5 else rng.choice(["update", "delete"])
                counter += 1
                try:
                    with conn.transaction():
                        conn.execute("SELECT orgmove.assert_writable(%s::text)", (str(self.org),))
                        if slow:
                            time.sleep(self.slow_writer_hold_s)  # a transaction in flight at the fence
                        if op == "insert":
                            title = f"w{writer}-{counter}"
                            row = conn.execute(
                                "INSERT INTO issues (project_id, author_id, iid, title, state, created_at) "
                                "VALUES (%s, %s, %s, %s, 1, now()) RETURNING id, clock_timestamp()",
                                (self.project_id, self.author_id, 10_000_000 + writer * 1_000_000 + counter,
                                 title)).fetchone()
                            assert row is not None
                            issue_id, at = row
                        elif op == "update":
                            issue_id = rng.choice(sorted(mine))
                            title = f"w{writer}-{counter}-u"
                            row = conn.execute("UPDATE issues SET title = %s WHERE id = %s "
                                               "RETURNING clock_timestamp()", (title, issue_id)).fetchone()
                            assert row is not None, f"own row {issue_id} vanished on {cell}"
                            at = row[0]
                        else:
                            issue_id = rng.choice(sorted(mine))
                            title = None
                            row = conn.execute("DELETE FROM issues WHERE id = %s RETURNING clock_timestamp()",
                                               (issue_id,)).fetchone()
                            assert row is not None, f"own row {issue_id} vanished on {cell}"
                            at = row[0]
                except psycopg.Error as exc:
                    if exc.sqlstate == READ_ONLY:
                        route = None
                        with self._lock:
                            self.read_only_refusals += 1
                        time.sleep(0.01)
                        continue
                    self.errors.append(f"{cell} {op}: {exc}")
                    route = None
                    conn.close()
                    time.sleep(0.05)
                    continue
                except AssertionError as exc:
                    self.errors.append(str(exc))
                    continue
                # Committed: the application acknowledges the write.
                with self._lock:
                    self.acks.append(Ack(op, issue_id, title, cell, at))
                if op == "delete":
                    mine.pop(issue_id, None)
                else:
                    mine[issue_id] = title or ""
                if self.pause_s:
                    time.sleep(self.pause_s)
        finally:
            for c in conns.values():
                c.close()

    def expected_state(self) -> dict[int, str | None]:
        """issue id -> last acknowledged title (None: deleted)."""
        final: dict[int, str | None] = {}
        for ack in self.acks:
            final[ack.issue_id] = ack.title
        return final
