"""The move job that workers run: one organization, one procrastinate job.

An attempt: take the slots of both Cells and of the total (:mod:`orgmove.rebalance.slots`);
undo what an earlier, interrupted attempt left (:func:`orgmove.teardown.run_rollback` of its
plan: the lease aborted, the source fence lifted, the partial copy deleted from the target), or
record its flip when the Topology Service says it happened; then :func:`orgmove.movejob.run_move`
(plan, copy, verify, cutover with its sync), and cleanup when the policy asks for it. The
``rebalance stop`` switch is read before the slots are taken and once more before the cutover:
a stopped move aborts before its fence.

Failures: an error that says it is ``retryable`` is retried by procrastinate with exponential
backoff up to ``max_attempts``; any other, or the last attempt, fails for good, after the
rollback that leaves the organization on its source, writable, with the reason in
``rebalance.moves``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import procrastinate
from procrastinate import JobContext
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from psycopg.types.json import Jsonb

from orgmove.config import Config
from orgmove.errors import MoveStateError, OrgmoveError
from orgmove.obs import METRICS, log
from orgmove.plan import Plan, default_plan_path
from orgmove.rebalance import queuedb, slots

TASK = "rebalance_move"


class MoveStopped(OrgmoveError):
    code = "rebalance_stopped"


@dataclass
class WorkerSettings:
    config: Config
    dsn: str
    name: str


_SETTINGS: WorkerSettings | None = None


def configure_worker(settings: WorkerSettings) -> None:
    global _SETTINGS
    _SETTINGS = settings


def _settings() -> WorkerSettings:
    if _SETTINGS is None:
        raise OrgmoveError("this process is not an orgmove worker", fix="run `orgmove worker`")
    return _SETTINGS


class PolicyRetry(BaseRetryStrategy):
    """Retries errors that are ``retryable`` (and anything that is not an orgmove error, such as a
    lost connection), with the policy's exponential backoff and attempt limit."""

    def get_retry_decision(self, *, exception: BaseException, job: procrastinate.jobs.Job) -> RetryDecision | None:
        policy = _settings().config.rebalance
        if isinstance(exception, MoveStopped):
            return None
        if isinstance(exception, OrgmoveError) and not exception.retryable:
            return None
        if job.attempts + 1 >= policy.max_attempts:
            return None
        return RetryDecision(retry_in={"seconds": policy.retry_wait_s * 2 ** job.attempts})


def register(app: procrastinate.App) -> None:
    app.task(name=queuedb.TASK_NAME, queue=queuedb.QUEUE, pass_context=True, retry=PolicyRetry())(move_job)


class _Recorder:
    """Writes the job's phase and progress to ``rebalance.moves``; also a ProgressSink."""

    def __init__(self, dsn: str, job_id: int) -> None:
        self.dsn = dsn
        self.job_id = job_id
        self._lock = threading.Lock()
        self._rows = 0
        self._bytes = 0
        self._last = 0.0

    def set(self, **fields: Any) -> None:
        cols = ", ".join(f"{k} = %s" for k in fields)
        values = [Jsonb(v) if isinstance(v, dict) else v for v in fields.values()]
        with queuedb.control_db(self.dsn) as conn:
            conn.execute(f"UPDATE rebalance.moves SET {cols}, updated_at = clock_timestamp() WHERE job_id = %s",  # noqa: S608
                         [*values, self.job_id])

    def started(self) -> None:
        with queuedb.control_db(self.dsn) as conn:
            conn.execute("UPDATE rebalance.moves SET started_at = coalesce(started_at, clock_timestamp())"
                         " WHERE job_id = %s", (self.job_id,))

    # ProgressSink
    def start(self, phase: str, tables: dict[str, int], total_bytes: int = 0) -> None:
        pass  # the phase is the one run_move announces (say); progress counts across its steps

    def advance(self, table: str, rows: int, nbytes: int = 0) -> None:
        with self._lock:
            self._rows += rows
            self._bytes += nbytes
            now = time.monotonic()
            if now - self._last < 1.0:
                return
            self._last = now
            rows_done, bytes_done = self._rows, self._bytes
        self.set(rows_done=rows_done, bytes_done=bytes_done)

    def finish(self) -> None:
        with self._lock:
            rows_done, bytes_done = self._rows, self._bytes
        self.set(rows_done=rows_done, bytes_done=bytes_done)


def move_job(context: JobContext, *, proposal_id: str, org: str, from_cell: str, to_cell: str) -> dict[str, Any]:
    st = _settings()
    job_id = int(context.job.id or 0)
    rec = _Recorder(st.dsn, job_id)
    rec.set(state="running", phase="waiting for slots", worker=st.name, attempts=context.job.attempts + 1)
    rec.started()
    try:
        return _attempt(st, rec, job_id, org, from_cell, to_cell)
    except MoveStopped as exc:
        _leave_on_source(st, rec, org, from_cell, to_cell)
        rec.set(state="stopped", phase="stopped", reason=exc.message, finished_at="now")
        raise
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, OrgmoveError) else f"{type(exc).__name__}: {exc}"
        retry = PolicyRetry().get_retry_decision(exception=exc, job=context.job) if isinstance(exc, Exception) else None
        if retry is None:
            _leave_on_source(st, rec, org, from_cell, to_cell)
            rec.set(state="failed", phase="failed", reason=reason, finished_at="now")
        else:
            rec.set(state="retrying", phase="waiting to retry", reason=reason)
        raise


def _plan_path(config: Config, org: str, from_cell: str, to_cell: str) -> Any:
    return default_plan_path(config.defaults.plans_dir, org, from_cell, to_cell)


def _stored_plan(dsn: str, job_id: int) -> Plan | None:
    with queuedb.control_db(dsn) as conn:
        row = conn.execute("SELECT plan FROM rebalance.moves WHERE job_id = %s", (job_id,)).fetchone()
    if not row or row["plan"] is None:
        return None
    return Plan.model_validate(row["plan"])


def _attempt(st: WorkerSettings, rec: _Recorder, job_id: int, org: str, from_cell: str, to_cell: str) -> dict[str, Any]:
    from orgmove.cutover import CutoverOptions, run_cutover
    from orgmove.movejob import run_move
    from orgmove.teardown import run_cleanup, run_rollback
    from orgmove.topology.client import client_from_config

    config, policy = st.config, st.config.rebalance
    with queuedb.control_db(st.dsn) as conn:
        def stopped() -> bool:
            return queuedb.is_stopped(conn)

        if stopped():
            raise MoveStopped("the rebalance was stopped before this move started",
                              fix="`orgmove rebalance start` again")
        held = slots.acquire(conn, from_cell, to_cell, policy.max_moves_per_cell, policy.max_moves_total,
                             give_up=stopped)
        if held is None:
            raise MoveStopped("the rebalance was stopped while this move waited for a slot",
                              fix="`orgmove rebalance start` again")
        run = conn.execute("INSERT INTO rebalance.runs (job_id, org, from_cell, to_cell, worker)"
                           " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                           (job_id, org, from_cell, to_cell, st.name)).fetchone()
        assert run is not None
        outcome = "failed"
        try:
            with client_from_config(config) as topo:
                owner = topo.owner_of_org(org)
            previous = _stored_plan(st.dsn, job_id)
            if owner == to_cell and previous is not None:
                # An earlier attempt flipped the claim and died before recording it.
                rec.set(phase="recording an earlier cutover")
                try:
                    run_cutover(previous, config, CutoverOptions(max_freeze_s=policy.max_freeze_s))
                except MoveStateError:
                    pass  # already recorded as committed on the target
            elif owner != from_cell:
                raise MoveStateError(f"the Topology Service says organization {org} is owned by {owner!r}, "
                                     f"not {from_cell!r}: the proposal is stale",
                                     fix="`orgmove rebalance plan` again")
            else:
                if previous is not None:
                    rec.set(phase="undoing an interrupted attempt")
                    run_rollback(previous, config)
                path = _plan_path(config, org, from_cell, to_cell)

                def say(message: str) -> None:
                    if message.startswith("["):
                        phase = message.split("]", 1)[1].split(":")[0].strip()
                        if phase == "copy" and path.exists():
                            rec.set(plan=json.loads(path.read_text(encoding="utf-8")))
                        if phase == "cutover" and stopped():
                            raise MoveStopped("the rebalance was stopped before this move's cutover",
                                              fix="`orgmove rebalance start` again")
                        rec.set(phase=phase)

                summary = run_move(config, org, from_cell, to_cell, rules=config.defaults.rules,
                                   workers=policy.workers_per_move, max_freeze_s=policy.max_freeze_s,
                                   progress=rec, say=say, plan_path=path)
                rec.set(rows_done=summary.copy.rows, bytes_done=summary.copy.bytes)
                METRICS.rebalance_bytes_moved.inc(summary.copy.bytes)
            previous = _stored_plan(st.dsn, job_id)
            if policy.cleanup and previous is not None:
                rec.set(phase="cleanup")
                run_cleanup(previous, config)
            rec.set(state="done", phase="done", reason=None, finished_at="now")
            outcome = "done"
            log(logging.INFO, "rebalance move done", org=org, source=from_cell, target=to_cell)
            return {"org": org, "to": to_cell}
        finally:
            conn.execute("UPDATE rebalance.runs SET ended_at = clock_timestamp(), outcome = %s WHERE id = %s",
                         (outcome, run["id"]))
            slots.release(conn, held)


def _leave_on_source(st: WorkerSettings, rec: _Recorder, org: str, from_cell: str, to_cell: str) -> None:
    """After the last attempt: undo the copy so the organization stays on its source, writable."""
    from orgmove.teardown import run_rollback

    plan = _stored_plan(st.dsn, rec.job_id)
    if plan is None:
        return
    try:
        rec.set(phase="rolling back")
        run_rollback(plan, st.config)
    except OrgmoveError as exc:
        log(logging.WARNING, "rollback after a failed move did not finish", org=org, error=str(exc))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
