"""Stream apply rate: orgmove's decoder + applier against PostgreSQL's native logical replication
(CREATE SUBSCRIPTION) on the same table, the same change workload, in the same run.

Two local clusters (wal_level=logical). The source gets a table of the GitLab-issues shape and
two slots created before the workload, so both appliers start from the same backlog: TXNS
transactions of mixed INSERT / UPDATE / DELETE (ROWS_PER_TXN rows each). Then each applier is
timed from its start until the target has applied through the source's LSN at the end of the
workload: native first (a subscription on target database ``native``), then orgmove
(``orgmove.capture.ChangeStream`` + ``orgmove.apply.Applier``, batching as ``orgmove sync`` does,
into target database ``orgmove``).

Usage: python bench/sync_throughput.py [TXNS]
Last line: ratio=<orgmove rows/s / native rows/s>  (goal >= 0.8)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from common import REPO  # noqa: F401  (puts the repository on sys.path)

from orgmove.apply import Applier, reset_origin
from orgmove.capture import ChangeStream, create_slot_with_snapshot, current_wal_lsn
from orgmove.pgoutput import Decoder
from orgmove.sandbox.pgcluster import LocalCluster, free_port

ROWS_PER_TXN = 4
SCHEMA = """
CREATE TABLE items (
    id bigint PRIMARY KEY, project_id bigint NOT NULL, title text NOT NULL, description text,
    state smallint NOT NULL DEFAULT 1, weight double precision, created_at timestamptz NOT NULL
)"""


def workload(dsn: str, txns: int) -> int:
    """Mixed changes; returns the number of row changes."""
    changes = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        next_id = 1
        for t in range(txns):
            with conn.transaction():
                kind = t % 4
                if kind in (0, 1):
                    conn.execute(
                        "INSERT INTO items SELECT g, g %% 50, 'title ' || g, repeat('d', 200), 1, g * 0.5, now() "
                        "FROM generate_series(%s::bigint, %s::bigint) g", (next_id, next_id + ROWS_PER_TXN - 1))
                    next_id += ROWS_PER_TXN
                elif kind == 2:
                    conn.execute("UPDATE items SET title = title || '+', state = 2 WHERE id > %s - %s AND id <= %s",
                                 (next_id - 1, ROWS_PER_TXN, next_id - 1))
                else:
                    conn.execute("DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY id LIMIT %s)",
                                 (ROWS_PER_TXN,))
            changes += ROWS_PER_TXN
    return changes


def wait_native(target_dsn: str, lsn: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(target_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT latest_end_lsn - '0/0'::pg_lsn FROM pg_stat_subscription "
                               "WHERE subname = 'bench' AND relid IS NULL").fetchone()
            if row and row[0] is not None and int(row[0]) >= lsn:
                return
            time.sleep(0.005)
    raise SystemExit("native subscription did not catch up")


def main() -> int:
    txns = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    base = Path(tempfile.mkdtemp(prefix="orgmove-bench-sync-"))
    src_cluster = LocalCluster(base / "source", free_port())
    dst_cluster = LocalCluster(base / "target", free_port())
    try:
        src_cluster.start()
        dst_cluster.start()
        src = src_cluster.dsn("postgres")
        with psycopg.connect(dst_cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE native")
            conn.execute("CREATE DATABASE orgmove")
        for dsn in (src, dst_cluster.dsn("native"), dst_cluster.dsn("orgmove")):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SCHEMA)
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute("CREATE PUBLICATION bench FOR TABLE items")
        # Both slots exist before the first change: both appliers face the same backlog.
        for slot in ("bench_native", "bench_orgmove", "bench_decode"):
            create_slot_with_snapshot(src, slot, cell="source", application_name="bench").release()
        t = time.monotonic()
        changes = workload(src, txns)
        with psycopg.connect(src, autocommit=True) as conn:
            end = current_wal_lsn(conn)
        print(f"workload: {txns} transactions, {changes} row changes in {time.monotonic() - t:.1f}s",
              file=sys.stderr)

        # native: PostgreSQL's apply worker (one per subscription), synchronous_commit off as usual
        t = time.monotonic()
        with psycopg.connect(dst_cluster.dsn("native"), autocommit=True) as conn:
            conn.execute(
                f"CREATE SUBSCRIPTION bench CONNECTION '{src}' PUBLICATION bench WITH (copy_data = false, "
                "create_slot = false, slot_name = 'bench_native', synchronous_commit = 'off')")
        wait_native(dst_cluster.dsn("native"), end)
        native_s = time.monotonic() - t

        # orgmove: decoder + applier
        t = time.monotonic()
        with psycopg.connect(dst_cluster.dsn("orgmove"), autocommit=True) as conn:
            reset_origin(conn, "bench")
            applier = Applier(conn, "bench", batch_txns=50)
            stream = ChangeStream(src, cell="source", slot="bench_orgmove", publication="bench",
                                  queue_size=20_000)
            applier.on_commit = stream.confirm
            with stream:
                while True:
                    item = stream.get(timeout=0.01)
                    if item is not None:
                        applier.handle(item.message)
                        continue
                    applier.flush()
                    if not applier.in_source_transaction and stream.idle and stream.received_lsn >= end:
                        break
            applier.close()
        orgmove_s = time.monotonic() - t
        with psycopg.connect(dst_cluster.dsn("native")) as a, psycopg.connect(dst_cluster.dsn("orgmove")) as b:
            q = "SELECT count(*), md5(string_agg(items::text, ',' ORDER BY id)) FROM items"
            same = a.execute(q).fetchone() == b.execute(q).fetchone()
        # decode only: the same messages through orgmove's pgoutput decoder, no I/O in the timing
        with psycopg.connect(src, autocommit=True) as conn:
            payloads = [bytes(r[0]) for r in conn.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes('bench_decode', NULL, NULL, "
                "'proto_version', '1', 'publication_names', 'bench')").fetchall()]
        t = time.monotonic()
        decoder = Decoder()
        for payload in payloads:
            decoder.decode(payload)
        decode_s = time.monotonic() - t
        with psycopg.connect(dst_cluster.dsn("native"), autocommit=True) as conn:
            conn.execute("ALTER SUBSCRIPTION bench DISABLE")
            conn.execute("ALTER SUBSCRIPTION bench SET (slot_name = NONE)")
            conn.execute("DROP SUBSCRIPTION bench")
    finally:
        for c in (src_cluster, dst_cluster):
            c.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
    native_rate, orgmove_rate = changes / native_s, changes / orgmove_s
    print(f"decode_messages_per_s={len(payloads) / decode_s:.0f} ({len(payloads)} messages)")
    print(f"native_rows_per_s={native_rate:.0f}")
    print(f"orgmove_rows_per_s={orgmove_rate:.0f}")
    print(f"same_result={same}")
    print(f"ratio={orgmove_rate / native_rate:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
