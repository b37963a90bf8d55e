"""The job queue: procrastinate on the Topology Service's database, and the rebalancer's own
tables beside it (``orgmove/sql/rebalance_schema.sql``): moves with phase and progress, the
history of attempts, the stop switch.

One procrastinate job per proposed move, with ``lock`` and ``queueing_lock`` ``org-<id>``: two
moves of one organization never run at once, and a second one is not even queued while the first
waits. Per-Cell and total concurrency are slots held as session advisory locks by the job
(:mod:`orgmove.rebalance.slots`): they vanish with the connection of a worker that dies.
"""

from __future__ import annotations

import asyncio
from typing import Any

import procrastinate

from orgmove.errors import BadInput
from orgmove.rebalance import jobs
from orgmove.rebalance.proposal import Proposal
from orgmove.rebalance.queuedb import QUEUE, TASK_NAME, control_db, ensure_schema, is_stopped


def make_app(dsn: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=4))
    jobs.register(app)
    return app


def enqueue(dsn: str, proposal: Proposal) -> list[dict[str, Any]]:
    """One job per move; moves whose organization already has a queued job are reported skipped."""
    ensure_schema(dsn)
    with control_db(dsn) as conn:
        conn.execute("UPDATE rebalance.control SET stopped = false, updated_at = now()")
        conn.execute("INSERT INTO rebalance.proposals (id, doc) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING",
                     (proposal.id, proposal.model_dump_json()))
    return asyncio.run(_defer_all(dsn, proposal))


async def _defer_all(dsn: str, proposal: Proposal) -> list[dict[str, Any]]:
    app = make_app(dsn)
    results: list[dict[str, Any]] = []
    async with app.open_async():
        task = app.tasks[TASK_NAME]
        for m in sorted(proposal.moves, key=lambda m: (m.wave, m.org)):
            lock = f"org-{m.org}"
            try:
                job_id = await task.configure(lock=lock, queueing_lock=lock, queue=QUEUE,
                                              priority=-m.wave).defer_async(
                    proposal_id=proposal.id, org=m.org, from_cell=m.from_cell, to_cell=m.to_cell)
            except procrastinate.exceptions.AlreadyEnqueued:
                results.append({"org": m.org, "job_id": None, "skipped": "a move of this organization is queued"})
                continue
            with control_db(dsn) as conn:
                conn.execute(
                    "INSERT INTO rebalance.moves (job_id, proposal_id, org, from_cell, to_cell, estimated_bytes, wave)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (job_id, proposal.id, m.org, m.from_cell, m.to_cell, m.estimated_bytes, m.wave))
            results.append({"org": m.org, "job_id": job_id, "from": m.from_cell, "to": m.to_cell})
    return results


def stop(dsn: str) -> dict[str, Any]:
    """No new moves: queued jobs are cancelled; running ones see the switch before their fence."""
    ensure_schema(dsn)
    with control_db(dsn) as conn, conn.transaction():
        conn.execute("UPDATE rebalance.control SET stopped = true, updated_at = now()")
        cancelled = conn.execute(
            "UPDATE procrastinate_jobs SET status = 'cancelled' WHERE queue_name = %s AND status = 'todo'"
            " RETURNING id", (QUEUE,)).fetchall()
        ids = [r["id"] for r in cancelled]
        conn.execute("UPDATE rebalance.moves SET state = 'stopped', phase = 'cancelled', finished_at = now(),"
                     " reason = 'rebalance stop before the move started' WHERE job_id = ANY(%s)", (ids,))
        running = conn.execute("SELECT count(*) AS n FROM rebalance.moves WHERE state IN ('running', 'retrying')"
                               ).fetchone()
    return {"stopped": True, "cancelled_jobs": ids, "running": running["n"] if running else 0}


def status(dsn: str) -> dict[str, Any]:
    with control_db(dsn) as conn:
        present = conn.execute("SELECT to_regclass('rebalance.moves') IS NOT NULL AS p").fetchone()
        if not (present and present["p"]):
            raise BadInput("no rebalance was started on this queue database",
                           fix="`orgmove rebalance plan` then `orgmove rebalance start PROPOSAL`")
        rows = conn.execute(
            "SELECT m.job_id, m.proposal_id, m.org, m.from_cell, m.to_cell, m.wave, m.state, m.phase,"
            " m.attempts, m.estimated_bytes, m.bytes_done, m.rows_done, m.reason, m.worker,"
            " j.status AS job_status, m.started_at, m.finished_at,"
            " round(extract(epoch FROM clock_timestamp() - m.updated_at)::numeric, 1)::float AS lag_s"
            " FROM rebalance.moves m LEFT JOIN procrastinate_jobs j ON j.id = m.job_id ORDER BY m.job_id"
        ).fetchall()
        stopped = is_stopped(conn)
    moves = []
    for r in rows:
        est = r["estimated_bytes"] or 0
        r["progress"] = round(min(1.0, r["bytes_done"] / est), 3) if est else (1.0 if r["state"] == "done" else 0.0)
        moves.append(r)
    counts: dict[str, int] = {}
    for r in moves:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return {"stopped": stopped, "counts": counts, "moves": moves,
            "queue_depth": sum(1 for r in moves if r["job_status"] == "todo"),
            "running": sum(1 for r in moves if r["job_status"] == "doing")}
