"""cutover, rollback and cleanup.

Cutover (DESIGN.md section 6, ADR 0002):
 0. pre-sync: while the org is still writable, re-checksum and re-copy dirty chunks, and refuse to
    fence when what is left cannot fit ``--max-freeze``;
 1. begin the move in the Topology Service: a lease and a fencing token;
 2. fence: the org turns ``read_only`` in the Topology Service, then the write fence on the source
    Cell: the exclusive advisory lock waits for every in-flight writer (the drain), the fence row
    makes every later writer fail;
 3. sync: one full checksum round, re-copy the dirty chunks, re-check only those (nothing changes
    under the fence) until clean: that is the final verify;
 4. commit: the Topology Service moves all of the org's claims to the target with compare-and-swap
    on the fencing token; the target is the owner and writable;
 5. the freeze window (fence to commit) is reported and recorded.
Any failure before the commit aborts: the Topology move is aborted, the source fence is lifted, the
org stays on the source, writable. After the commit the source keeps its (permanent) fence until
``cleanup`` deletes the org's rows there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from orgmove import db, fkcheck, state, triggers
from orgmove.chunking import KeyRange
from orgmove.config import Config
from orgmove.errors import (
    BadInput,
    CutoverAborted,
    Interrupted,
    MoveStateError,
    OrgmoveError,
    PreflightFailed,
    TopologyUnavailable,
    VerificationMismatch,
)
from orgmove.faults import failpoint
from orgmove.movectx import MoveContext
from orgmove.obs import METRICS, NullProgress, ProgressSink, log
from orgmove.plan import Plan, Step, table_ident

MAX_SYNC_ROUNDS = 6
PRESYNC_MAX_ROUNDS = 3
PRESYNC_SETTLED_CHUNKS = 4


@dataclass
class CutoverOptions:
    dry_run: bool = False
    max_freeze_s: float = 300.0
    lease_ttl_s: float | None = None
    workers: int = 2
    drain_timeout_s: float | None = None


@dataclass
class CutoverReport:
    move_key: str
    org: str
    from_cell: str
    to_cell: str
    dry_run: bool = False
    committed: bool = False
    new_owner: str | None = None
    freeze_window_s: float | None = None
    sync_rounds: int = 0
    rows_resynced: int = 0
    verify_seconds: float = 0.0
    topology_move_id: str | None = None
    fencing_token: int | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "move": self.move_key, "org": self.org, "from": self.from_cell, "to": self.to_cell,
            "dry_run": self.dry_run, "committed": self.committed, "new_owner": self.new_owner,
            "freeze_window_s": None if self.freeze_window_s is None else round(self.freeze_window_s, 3),
            "sync_rounds": self.sync_rounds, "rows_resynced": self.rows_resynced,
            "verify_seconds": round(self.verify_seconds, 3),
            "topology_move_id": self.topology_move_id, "fencing_token": self.fencing_token,
            "checks": self.checks,
            "steps": [{**st, "seconds": round(st["seconds"], 3)} for st in self.steps],
        }

    def human(self) -> str:
        if self.dry_run:
            lines = [f"dry run: cutover {self.move_key} (nothing changed)"]
            mark = {True: "ok ", False: "NO "}
            lines += [f"  {mark.get(v, '   ') if isinstance(v, bool) else '   '} {k}: {v}"
                      for k, v in self.checks.items()]
            return "\n".join(lines)
        lines = [f"cutover {self.move_key}: organization {self.org} now lives on {self.new_owner}"]
        for s in self.steps:
            lines.append(f"  {s['step']:<10} {s['seconds']:>8.3f}s  {s.get('detail', '')}")
        lines.append(f"freeze window: {self.freeze_window_s:.3f}s (fence to commit)")
        lines.append(f"next: orgmove cleanup PLAN  (deletes the org's rows from {self.from_cell})")
        return "\n".join(lines)


def freeze_estimate(full_checksum_s: float) -> float:
    """The write freeze to expect: one full checksum round under the fence, the re-copy and
    re-check of what writes dirtied since the pre-sync, and the fence and flip themselves."""
    return full_checksum_s * 1.5 + 1.0


def _topology(config: Config) -> Any:
    from orgmove.topology.client import client_from_config

    if config.topology is None:
        raise BadInput(
            "cutover needs the Topology Service, and the config has no [topology] section",
            fix="add [topology] url = ... (and token_env) to the config",
        )
    return client_from_config(config)


def _org_int(plan: Plan) -> int:
    try:
        return int(plan.org)
    except (TypeError, ValueError):
        raise BadInput(f"the Topology Service keys organizations by integer id; {plan.org!r} is not one",
                       fix="use the organization's numeric id") from None


# --- fence primitives on a Cell --------------------------------------------------------------------


def fence_function_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regprocedure('orgmove.assert_writable(text)') IS NOT NULL").fetchone()
    return bool(row and row[0])


def install_source_fence(conn: psycopg.Connection[Any], org: str, move_key: str, token: int,
                         drain_timeout_s: float, ttl_s: float) -> datetime:
    """Take the org's exclusive fence lock (waiting for in-flight writers), insert the fence row.
    Returns the fence time. Raises CutoverAborted when writers do not drain in time."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{int(drain_timeout_s * 1000)}ms")))
            conn.execute("SELECT pg_advisory_xact_lock(orgmove.fence_lock_key(%s))", (org,))
            row = conn.execute(
                "INSERT INTO orgmove.fences (organization_id, move_key, fencing_token, expires_at) "
                "VALUES (%s, %s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (organization_id) DO UPDATE SET move_key = excluded.move_key, "
                "fencing_token = excluded.fencing_token, fenced_at = clock_timestamp(), "
                "expires_at = excluded.expires_at RETURNING fenced_at",
                (org, move_key, token, ttl_s),
            ).fetchone()
    except psycopg.errors.LockNotAvailable:
        raise CutoverAborted(
            f"writers of organization {org} did not finish within {drain_timeout_s:g}s of the fence",
            fix="retry when the write load is lower, or raise defaults.lock_timeout_s",
        ) from None
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def lift_fence(conn: psycopg.Connection[Any], org: str) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM orgmove.fences WHERE organization_id = %s", (org,))


def has_fence(conn: psycopg.Connection[Any], org: str) -> bool:
    if not fence_function_installed(conn):
        return False
    row = conn.execute("SELECT 1 FROM orgmove.fences WHERE organization_id = %s", (org,)).fetchone()
    return row is not None


# --- sync: checksum everything, re-copy what differs -----------------------------------------------


def _all_chunks(ctx: MoveContext, dst: psycopg.Connection[Any]) -> list[tuple[Step, int, KeyRange]]:
    steps = {s.table: s for s in ctx.plan.steps}
    return [(steps[c.table_name], c.chunk_no, c.range)
            for c in state.load_chunks(dst, ctx.plan.move_key) if c.table_name in steps]


def checksum_round(ctx: MoveContext, work: list[tuple[Step, int, KeyRange]], workers: int,
                   progress: ProgressSink, phase: str = "sync: checksums"
                   ) -> tuple[list[tuple[Step, int, KeyRange]], float, Any]:
    """Checksums every chunk of ``work``; returns the dirty ones, the seconds taken, the report."""
    import asyncio

    from orgmove.verify import TableVerify, VerifyOptions, VerifyReport, verify_chunks

    report = VerifyReport(ctx.plan.move_key)
    for s in ctx.plan.steps:
        report.tables[s.table] = TableVerify(s.table)
    started = time.monotonic()
    options = VerifyOptions(workers=workers, max_examples=5)
    tables = {step.table for step, _, _ in work}
    progress.start(phase, {s.table: s.estimated_rows for s in ctx.plan.steps if s.table in tables})
    try:
        results = asyncio.run(verify_chunks(ctx, work, options, progress, report))
    finally:
        progress.finish()
    steps = {s.table: s for s in ctx.plan.steps}
    dirty = [(steps[r.table], r.chunk_no, r.range) for r in results if not r.equal]
    return dirty, time.monotonic() - started, report


def sync_until_clean(ctx: MoveContext, dst: psycopg.Connection[Any], options: CutoverOptions,
                     progress: ProgressSink, deadline: float | None, report: CutoverReport,
                     generation_base: int, *, fenced: bool = False) -> tuple[bool, float, Any]:
    """Checksum rounds, re-copying dirty chunks, until a round is clean. Returns (clean, seconds of
    the first full round, the last round's report).

    Under the fence nothing changes on the source any more, so after one full round only the
    chunks just re-copied need checking again: the final verify is that full round plus the
    re-check of every chunk it found dirty."""
    from orgmove.copy import resync_chunks

    work = _all_chunks(ctx, dst)
    last_verify = None
    full_round_s = 0.0
    for round_no in range(1, MAX_SYNC_ROUNDS + 1):
        label = f"{'sync' if fenced else 'pre-sync'} round {round_no}: checksums"
        dirty, seconds, last_verify = checksum_round(ctx, work, options.workers, progress, label)
        if round_no == 1 or not fenced:
            full_round_s = seconds
        report.sync_rounds += 1
        if not dirty:
            return True, full_round_s, last_verify
        if deadline is not None and time.monotonic() > deadline:
            return False, full_round_s, last_verify
        log(logging.INFO, f"sync round {round_no}: re-copying {len(dirty)} dirty chunks",
            move=ctx.plan.move_key)
        report.rows_resynced += resync_chunks(ctx, dirty, generation=generation_base + round_no)
        if fenced:
            work = dirty
        elif len(dirty) <= PRESYNC_SETTLED_CHUNKS or round_no >= PRESYNC_MAX_ROUNDS:
            # While writable, writes keep dirtying chunks: stop once what is left is small.
            return False, full_round_s, last_verify
    return False, full_round_s, last_verify


# --- cutover ---------------------------------------------------------------------------------------


def _preconditions(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any],
                   topo: Any) -> dict[str, Any]:
    plan = ctx.plan
    checks: dict[str, Any] = {}
    ctx.check_fingerprints(src, dst)
    checks["schemas unchanged since plan"] = True
    move = state.get_move(dst, plan.move_key)
    counts = state.chunk_counts(dst, plan.move_key)
    pending = sum(n for s, n in counts.items() if s != "done")
    if move is None or not counts or pending:
        raise MoveStateError(
            f"the copy of move {plan.move_key} is not complete "
            f"({counts.get('done', 0)} chunks done, {pending} pending)",
            fix="run `orgmove copy` with this plan until it finishes, then cutover",
        )
    if move.state in ("committed", "cleaning", "cleaned"):
        raise MoveStateError(f"move {plan.move_key} is already committed",
                             fix="nothing to do; `orgmove cleanup` removes the source rows")
    checks["copy complete"] = True
    for name, conn in ((ctx.source, src), (ctx.target, dst)):
        if not fence_function_installed(conn):
            raise PreflightFailed(
                f"the write fence (orgmove.assert_writable) is not installed on cell {name!r}",
                fix="install it as an administrator: psql -f orgmove/sql/cell_schema.sql "
                "(runbooks/09-least-privilege.md)",
            )
    checks["fence function installed"] = True
    # The sync re-copies dirty chunks into the target: as a replica, under the plan's trigger policy.
    with db.wrap_errors(ctx.target, "checking triggers and the replica role"):
        triggers.check_target(dst, plan)
    checks["target triggers accepted"] = True
    owner = topo.owner_of_org(_org_int(plan))
    if owner != plan.from_cell:
        raise PreflightFailed(
            f"the Topology Service says organization {plan.org} is owned by {owner!r}, not by the "
            f"plan's source {plan.from_cell!r}",
            fix="check `orgmove status --org` and plan from the owning cell",
        )
    checks["source owns the organization"] = True
    active = [m for m in topo.moves_for_org(_org_int(plan))
              if m.status in ("begun", "fenced") and str(m.move_id) != (move.get("topology_move_id") or "")]
    live = [m for m in active if m.lease_expires_at.timestamp() > time.time()]
    if live:
        raise MoveStateError(
            f"another move of organization {plan.org} holds the lease ({live[0].move_id}, "
            f"{live[0].from_cell} -> {live[0].to_cell})",
            fix="wait for it to finish, or abort it with `orgmove rollback` on its plan",
        )
    checks["lease available"] = True
    return checks


def run_cutover(plan: Plan, config: Config, options: CutoverOptions | None = None,
                progress: ProgressSink | None = None) -> CutoverReport:
    with _topology(config) as topo:
        return _run_cutover(plan, config, topo, options or CutoverOptions(), progress or NullProgress())


def _run_cutover(plan: Plan, config: Config, topo: Any, options: CutoverOptions,
                 progress: ProgressSink) -> CutoverReport:
    ctx = MoveContext.create(plan, config)
    report = CutoverReport(plan.move_key, str(plan.org), plan.from_cell, plan.to_cell, dry_run=options.dry_run)
    ttl = options.lease_ttl_s or config.defaults.lease_ttl_s
    drain_timeout = options.drain_timeout_s or config.defaults.lock_timeout_s

    with ctx.control("cutover") as (src, dst):
        if options.dry_run:
            previous = state.get_move(dst, plan.move_key)
            if previous is not None and previous.state == "cutover":
                report.checks["an interrupted cutover is pending"] = (
                    "yes: a real cutover (or rollback) first finishes or aborts it")
        else:
            finished = _finish_or_abort_previous(ctx, src, dst, topo)
            if finished is not None:
                return finished
        report.checks.update(_preconditions(ctx, src, dst, topo))
        if options.dry_run:
            dirty, seconds, _ = checksum_round(ctx, _all_chunks(ctx, dst), options.workers, progress,
                                               "dry run: checksums")
            report.checks["verify clean now"] = not dirty
            report.checks["dirty chunks now"] = len(dirty)
            report.checks["estimated freeze s"] = round(freeze_estimate(seconds), 3)
            report.checks["fits --max-freeze"] = report.checks["estimated freeze s"] <= options.max_freeze_s
            report.checks["foreign keys clean now"] = fkcheck.check_foreign_keys(dst, plan).clean
            return report

        # 0. pre-sync while writable, and the freeze estimate.
        t0 = time.monotonic()
        clean, verify_s, _ = sync_until_clean(ctx, dst, options, progress, None, report, 1000)
        report.steps.append({"step": "pre-sync", "seconds": time.monotonic() - t0,
                             "detail": f"{report.sync_rounds} rounds, {report.rows_resynced} rows"})
        estimate = freeze_estimate(verify_s)
        if estimate > options.max_freeze_s:
            raise CutoverAborted(
                f"the write freeze would take about {estimate:.1f}s (a checksum pass takes "
                f"{verify_s:.1f}s), more than --max-freeze {options.max_freeze_s:g}s; nothing was fenced",
                fix="raise --max-freeze, add --workers, or cut over at a quieter time",
            )

        # 1. lease
        mv = topo.begin_move(_org_int(plan), plan.from_cell, plan.to_cell, ttl)
        report.topology_move_id = str(mv.move_id)
        report.fencing_token = int(mv.fencing_token)
        state.update_move(dst, plan.move_key, state="cutover", topology_move_id=str(mv.move_id),
                          fencing_token=int(mv.fencing_token), last_error=None)
        state.record_event(dst, plan.move_key, "lease", "move lease taken",
                           topology_move_id=str(mv.move_id), token=int(mv.fencing_token))
        fenced_wall = None
        try:
            failpoint("cutover.after_lease")
            # 2. fence
            t_fence = time.monotonic()
            topo.fence(mv.move_id, mv.fencing_token)
            fenced_wall = install_source_fence(src, str(plan.org), plan.move_key,
                                               int(mv.fencing_token), drain_timeout, ttl)
            state.update_move(dst, plan.move_key, fenced_at=fenced_wall)
            state.record_event(dst, plan.move_key, "fenced", "writes fenced and drained")
            report.steps.append({"step": "fence", "seconds": time.monotonic() - t_fence,
                                 "detail": "topology read_only, source fence, writers drained"})
            failpoint("cutover.after_fence")
            # 3-4. sync until clean: the last clean round is the final verify.
            t_sync = time.monotonic()
            deadline = t_fence + options.max_freeze_s
            clean, verify_s, final = sync_until_clean(ctx, dst, options, progress, deadline, report, 2000,
                                                      fenced=True)
            report.verify_seconds = verify_s
            report.steps.append({"step": "sync", "seconds": time.monotonic() - t_sync,
                                 "detail": f"final verify {verify_s:.3f}s"})
            if not clean:
                raise VerificationMismatch(
                    f"the target did not become equal to the source within the freeze "
                    f"({final.mismatched_chunks if final else '?'} chunks still differ); aborted",
                    fix="run `orgmove verify` for the differing rows; the org stays on the source",
                )
            if time.monotonic() - t_fence > options.max_freeze_s:
                raise CutoverAborted(
                    f"the freeze passed --max-freeze {options.max_freeze_s:g}s before the flip",
                    fix="raise --max-freeze or cut over at a quieter time; the org stays on the source",
                )
            # Writing as a replica skipped the target's FK triggers: one anti-join per foreign key
            # over the org's rows, after the last re-copy and before the flip (exit 3, no flip).
            t_fk = time.monotonic()
            fks = fkcheck.check_foreign_keys(dst, plan)
            report.steps.append({"step": "foreign keys", "seconds": time.monotonic() - t_fk,
                                 "detail": f"{fks.checked} foreign keys, {len(fks.dangling)} dangling"})
            fkcheck.raise_if_dangling(fks, plan)
            failpoint("cutover.before_commit")
            # Both Cells must answer right before the flip: never hand the org to a target that
            # is down, nor leave a source we cannot fence for good.
            for name, conn in ((ctx.source, src), (ctx.target, dst)):
                with db.wrap_errors(name, "health check before the flip"):
                    conn.execute("SELECT 1")
            topo.renew(mv.move_id, mv.fencing_token, ttl)
            # The source fence becomes permanent before the flip: should the mover die right after
            # the flip, no write can land on the source once the target owns the org.
            _make_fence_permanent(src, str(plan.org))
            # 5. flip
            t_commit = time.monotonic()
            committed = _commit(topo, mv, plan.from_cell)
            failpoint("cutover.after_flip")
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, OrgmoveError) else f"{type(exc).__name__}: {exc}"
            _abort(ctx, src, dst, topo, mv, reason)
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(
                    "cutover interrupted by the operator; it was aborted and the organization "
                    f"stays on {plan.from_cell}, writable", fix="rerun `orgmove cutover` when ready",
                ) from None
            if isinstance(exc, OrgmoveError) and not isinstance(exc, CutoverAborted | VerificationMismatch):
                raise CutoverAborted(
                    f"cutover aborted: {exc.message}; the organization stays on {plan.from_cell}, "
                    "writable", fix=exc.fix or "fix the cause and rerun `orgmove cutover`",
                ) from exc
            raise
        report.steps.append({"step": "commit", "seconds": time.monotonic() - t_commit,
                             "detail": f"{committed.claims_moved} claims moved"})
        freeze = time.monotonic() - t_fence
        _after_commit(ctx, dst, freeze, report)
        report.committed = True
        report.new_owner = plan.to_cell
        report.freeze_window_s = freeze
        METRICS.freeze_window.set(freeze)
        failpoint("cutover.after_commit")
    return report


def _commit(topo: Any, mv: Any, expected_owner: str) -> Any:
    """Commit; after a lost answer, read the move back rather than guess."""
    try:
        return topo.commit_move(mv.move_id, mv.fencing_token, expected_owner)
    except TopologyUnavailable:
        current = topo.get_move(mv.move_id)
        if current.status == "committed":
            return current
        raise


def _make_fence_permanent(src: psycopg.Connection[Any], org: str) -> None:
    with src.transaction():
        src.execute("UPDATE orgmove.fences SET expires_at = NULL WHERE organization_id = %s", (org,))


def _after_commit(ctx: MoveContext, dst: psycopg.Connection[Any], freeze: float,
                  report: CutoverReport) -> None:
    plan = ctx.plan
    if fence_function_installed(dst):
        lift_fence(dst, str(plan.org))  # a move back may have left one: the target is writable now
    state.update_move(dst, plan.move_key, state="committed", committed_at=state.db_now(dst),
                      freeze_window_s=freeze, verify_clean=True, verify_seconds=report.verify_seconds)
    state.record_event(dst, plan.move_key, "committed", "claims flipped to the target",
                       freeze_window_s=round(freeze, 3))
    log(logging.INFO, "cutover committed", move=plan.move_key, freeze_window_s=round(freeze, 3),
        new_owner=plan.to_cell)


def _abort(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any], topo: Any,
           mv: Any, reason: str) -> None:
    """Return the org to its source, writable. Best effort on each part: a part that fails is
    reported and left to the lease expiry or to `orgmove rollback`."""
    plan = ctx.plan
    problems = []
    try:
        current = topo.get_move(mv.move_id)
        if current.status == "committed":  # the flip happened after all: finish instead
            _after_commit(ctx, dst, 0.0, CutoverReport(plan.move_key, str(plan.org), plan.from_cell,
                                                       plan.to_cell))
            return
        topo.abort_move(mv.move_id, mv.fencing_token, reason[:500])
    except Exception as exc:
        problems.append(f"topology abort: {exc}")
    for name, conn in ((ctx.source, src),):
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            lift_fence(conn, str(plan.org))
        except Exception as exc:
            problems.append(f"lift fence on {name}: {exc}")
    try:
        state.update_move(dst, plan.move_key, state="aborted", last_error=reason[:2000])
        state.record_event(dst, plan.move_key, "aborted", reason[:2000], problems=problems)
    except Exception as exc:
        problems.append(f"record abort: {exc}")
    if problems:
        log(logging.ERROR, "abort incomplete: " + "; ".join(problems), move=plan.move_key)


def _finish_or_abort_previous(ctx: MoveContext, src: psycopg.Connection[Any],
                              dst: psycopg.Connection[Any], topo: Any) -> CutoverReport | None:
    """A previous cutover died (kill -9): finish it if the flip happened (its report is returned),
    otherwise abort it (None: go on with a new cutover)."""
    plan = ctx.plan
    move = state.get_move(dst, plan.move_key)
    if move is None or move.state != "cutover" or not move.get("topology_move_id"):
        return None
    previous = topo.get_move(move.get("topology_move_id"))
    if previous.status == "committed":
        if has_fence(src, str(plan.org)):
            _make_fence_permanent(src, str(plan.org))
        freeze = 0.0
        if previous.fenced_at and previous.committed_at:
            freeze = (previous.committed_at - previous.fenced_at).total_seconds()
        report = CutoverReport(plan.move_key, str(plan.org), plan.from_cell, plan.to_cell, committed=True,
                               new_owner=plan.to_cell, freeze_window_s=freeze,
                               topology_move_id=str(previous.move_id), fencing_token=int(previous.fencing_token))
        report.steps.append({"step": "recorded", "seconds": 0.0,
                             "detail": "an interrupted earlier cutover had flipped the claims"})
        _after_commit(ctx, dst, freeze, report)
        return report
    _abort(ctx, src, dst, topo, previous, "an earlier cutover was interrupted")
    state.update_move(dst, plan.move_key, state="copied")
    return None


# --- rollback and cleanup --------------------------------------------------------------------------


def _delete_org_rows(conn: psycopg.Connection[Any], step: Step, plan: Plan, batch_rows: int,
                     progress: ProgressSink | None = None, pause_s: float = 0.0) -> int:
    """Delete the org's rows of one table in batches; returns the rows deleted."""
    from orgmove.chunking import WHOLE, org_rows_where

    where = org_rows_where(step, plan.root, plan.org, WHOLE)
    t = table_ident(step.table)
    if step.key:
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in step.key)
        keys_row = keys if len(step.key) == 1 else sql.SQL("({})").format(keys)
        stmt = sql.SQL("DELETE FROM {t} WHERE {kr} IN (SELECT {k} FROM {t} WHERE {w} LIMIT {n})").format(
            t=t, kr=keys_row, k=keys, w=where, n=sql.Literal(batch_rows))
    else:
        stmt = sql.SQL("DELETE FROM {t} WHERE {w}").format(t=t, w=where)
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(stmt)
            n = cur.rowcount
        total += n
        if progress is not None:
            progress.advance(step.table, n)
        if n == 0 or not step.key:
            return total
        if pause_s:
            time.sleep(pause_s)


def run_rollback(plan: Plan, config: Config) -> dict[str, Any]:
    ctx = MoveContext.create(plan, config)
    deleted: dict[str, int] = {}
    with ctx.control("rollback") as (src, dst):
        move = state.get_move(dst, plan.move_key)
        if move is not None and move.state in ("committed", "cleaning", "cleaned"):
            raise MoveStateError(
                f"move {plan.move_key} was committed: organization {plan.org} lives on {plan.to_cell}; "
                "rollback only undoes a move before its flip",
                fix=f"a move back is a new move: `orgmove move --org {plan.org} --from {plan.to_cell} "
                f"--to {plan.from_cell}`",
            )
        if config.topology is not None:
            with _topology(config) as topo:
                if move is not None and move.get("topology_move_id"):
                    _abort_topology_move(topo, plan, move.get("topology_move_id"))
                owner = topo.owner_of_org(_org_int(plan))
                if owner == plan.to_cell:
                    raise MoveStateError(
                        f"the Topology Service says organization {plan.org} lives on {plan.to_cell}; "
                        f"rollback would delete its live rows there",
                        fix="a move back is a new move; nothing was deleted",
                    )
        if config.topology is None:
            log(logging.WARNING, "no Topology Service configured: rollback cannot check who owns the "
                "organization; it trusts the move state on the target", move=plan.move_key)
        if has_fence(src, str(plan.org)):
            lift_fence(src, str(plan.org))
        for step in reversed(plan.steps):
            with db.wrap_errors(ctx.target, f"delete {step.table}"):
                deleted[step.table] = _delete_org_rows(dst, step, plan, 10_000)
        if move is not None:
            with dst.transaction():
                for table in ("chunks", "chunk_log", "verify_chunks"):
                    dst.execute(sql.SQL("DELETE FROM {} WHERE move_key = %s").format(
                        sql.Identifier("orgmove", table)), (plan.move_key,))
            state.update_move(dst, plan.move_key, state="rolled_back", last_error=None)
            state.record_event(dst, plan.move_key, "rolled_back", "copied rows deleted from the target",
                               rows=sum(deleted.values()))
    return {"move": plan.move_key, "rows_deleted": sum(deleted.values()), "tables": deleted,
            "owner": plan.from_cell}


def _abort_topology_move(topo: Any, plan: Plan, move_id: str) -> None:
    previous = topo.get_move(move_id)
    if previous.status == "committed":
        raise MoveStateError(
            f"the Topology Service says move {plan.move_key} was committed",
            fix="rerun `orgmove cutover` to record it; a move back is a new move",
        )
    if previous.status in ("begun", "fenced"):
        topo.abort_move(previous.move_id, previous.fencing_token, "rollback")


def run_cleanup(plan: Plan, config: Config, *, batch_rows: int = 10_000, pause_s: float = 0.0,
                progress: ProgressSink | None = None) -> dict[str, Any]:
    progress = progress or NullProgress()
    ctx = MoveContext.create(plan, config)
    deleted: dict[str, int] = {}
    with ctx.control("cleanup") as (src, dst):
        move = state.get_move(dst, plan.move_key)
        if move is None or move.state not in ("committed", "cleaning", "cleaned"):
            raise MoveStateError(
                f"move {plan.move_key} is not committed (state {move.state if move else 'none'}); "
                "cleanup deletes the source rows only after the flip",
                fix="finish the move with `orgmove cutover` first",
            )
        if not move.get("verify_clean"):
            raise MoveStateError(f"move {plan.move_key} has no clean verification on record",
                                 fix="run `orgmove verify` until it reports equal")
        if config.topology is not None:
            with _topology(config) as topo:
                owner = topo.owner_of_org(_org_int(plan))
            if owner != plan.to_cell:
                raise PreflightFailed(
                    f"the Topology Service says organization {plan.org} is owned by {owner!r}, "
                    f"not {plan.to_cell!r}; refusing to delete its rows from {plan.from_cell}",
                    fix="check `orgmove status --org`",
                )
        state.update_move(dst, plan.move_key, state="cleaning")
        progress.start("cleanup", {s.table: s.estimated_rows for s in plan.steps})
        try:
            for step in reversed(plan.steps):
                with db.wrap_errors(ctx.source, f"delete {step.table}"):
                    deleted[step.table] = _delete_org_rows(src, step, plan, batch_rows, progress, pause_s)
        finally:
            progress.finish()
        state.update_move(dst, plan.move_key, state="cleaned")
        state.record_event(dst, plan.move_key, "cleaned", "source rows deleted",
                           rows=sum(deleted.values()))
    return {"move": plan.move_key, "rows_deleted": sum(deleted.values()), "tables": deleted}
