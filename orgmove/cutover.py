"""cutover (docs/architecture.md "Cutover", ADR 0002); rollback and cleanup are in
:mod:`orgmove.teardown`, the sync rounds in :mod:`orgmove.sync`, the write fence in
:mod:`orgmove.fence`.

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
from typing import Any

import psycopg

from orgmove import capture_setup, db, fkcheck, reverse, state, triggers
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
from orgmove.fence import fence_function_installed, has_fence, install_source_fence, lift_fence, make_fence_permanent
from orgmove.movectx import MoveContext
from orgmove.obs import METRICS, NullProgress, ProgressSink, log
from orgmove.pgoutput import lsn_to_str
from orgmove.plan import Plan
from orgmove.stream_cutover import StreamCutover, touched_check
from orgmove.sync import all_chunks, checksum_round, sync_until_clean
from orgmove.topology.api import TopologyAPI
from orgmove.topology.client import client_from_config
from orgmove.topology.models import Move, org_key


@dataclass
class CutoverOptions:
    dry_run: bool = False
    max_freeze_s: float = 300.0
    lease_ttl_s: float | None = None
    workers: int = 2
    drain_timeout_s: float | None = None
    reverse_stream: bool = False  # a stream target -> source from the flip, for rollback (reverse.py)


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
    estimated_freeze_s: float | None = None
    already_done: bool = False

    @property
    def refused(self) -> list[str]:
        """The dry run's checks the real cutover would refuse on (each a boolean check marked NO)."""
        return [k for k, v in self.checks.items() if v is False]

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
            "estimated_freeze_s": None if self.estimated_freeze_s is None else round(self.estimated_freeze_s, 3),
            "already_done": self.already_done,
        }

    def human(self, plan_file: str = "PLAN") -> str:
        if self.dry_run:
            lines = [f"dry run: cutover {self.move_key} (nothing changed)"]
            mark = {True: "ok ", False: "NO "}
            lines += [f"  {mark.get(v, '   ') if isinstance(v, bool) else '   '} {k}: {v}"
                      for k, v in self.checks.items()]
            if self.refused:
                lines.append(f"the real cutover would refuse: {', '.join(self.refused)}")
            else:
                lines.append(f"next: orgmove cutover {plan_file} --yes")
            return "\n".join(lines)
        if self.already_done:
            lines = [f"already done: move {self.move_key} was committed earlier; organization {self.org} "
                     f"lives on {self.new_owner}"]
        else:
            lines = [f"cutover {self.move_key}: organization {self.org} now lives on {self.new_owner}"]
        for s in self.steps:
            lines.append(f"  {s['step']:<12} {s['seconds'] * 1000:>9,.0f} ms  {s.get('detail', '')}")
        if self.freeze_window_s is not None:
            estimated = ("" if self.estimated_freeze_s is None
                         else f"; estimated {self.estimated_freeze_s * 1000:,.0f} ms")
            lines.append(f"freeze window: {self.freeze_window_s * 1000:,.0f} ms (fence to commit{estimated})")
        lines.append(f"next: orgmove cleanup {plan_file} --yes  (deletes the org's rows from {self.from_cell})")
        return "\n".join(lines)


def freeze_estimate(full_checksum_s: float, topology_call_s: float) -> float:
    """The write freeze to expect, from measurements of this run: one full checksum round under
    the fence (the final verify), and the Topology Service calls inside the window (fence, renew,
    commit), each timed as one call made before the fence."""
    return full_checksum_s + 3 * topology_call_s


def _refuse_unless_it_fits(estimate: float, options: CutoverOptions, report: CutoverReport, why: str,
                           remedy: str = "") -> None:
    report.estimated_freeze_s = estimate
    if estimate > options.max_freeze_s:
        # A pre-flight refusal (exit 2): nothing was fenced and the organization stays writable.
        raise PreflightFailed(
            f"the write freeze would take about {estimate:.3f}s ({why}), more than --max-freeze "
            f"{options.max_freeze_s:g}s; nothing was fenced",
            fix=f"raise --max-freeze to at least {estimate * 1.2:.2f}, or {remedy}cut over at a quieter time",
        )


def _time_topology_call(topo: TopologyAPI, plan: Plan) -> float:
    started = time.monotonic()
    topo.owner_of_org(plan_org_key(plan))
    return time.monotonic() - started


def _already_committed(dst: psycopg.Connection[Any], report: CutoverReport) -> bool:
    """A rerun of a committed cutover is a no-op that reports the recorded flip."""
    move = state.get_move(dst, report.move_key)
    if move is None or move.state not in state.AFTER_FLIP:
        return False
    report.already_done = True
    report.committed = True
    report.new_owner = report.to_cell
    report.freeze_window_s = move.get("freeze_window_s")
    report.topology_move_id = move.get("topology_move_id")
    report.fencing_token = move.get("fencing_token")
    return True


def topology_client(config: Config) -> TopologyAPI:
    if config.topology is None:
        raise BadInput(
            "cutover needs the Topology Service, and the config has no [topology] section",
            fix="add [topology] url = ... (and token_env) to the config",
        )
    return client_from_config(config)


def plan_org_key(plan: Plan) -> str:
    """The key the Topology Service knows the plan's organization by (its id as text, so a uuid
    organization routes like an integer one)."""
    return org_key(plan.org)


# --- cutover ---------------------------------------------------------------------------------------


def _preconditions(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any],
                   topo: TopologyAPI) -> dict[str, Any]:
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
    if move.state in state.AFTER_FLIP:
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
    owner = topo.owner_of_org(plan_org_key(plan))
    if owner != plan.from_cell:
        raise PreflightFailed(
            f"the Topology Service says organization {plan.org} is owned by {owner!r}, not by the "
            f"plan's source {plan.from_cell!r}",
            fix="check `orgmove status --org` and plan from the owning cell",
        )
    checks["source owns the organization"] = True
    active = [m for m in topo.moves_for_org(plan_org_key(plan))
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
    with topology_client(config) as topo:
        return _run_cutover(plan, config, topo, options or CutoverOptions(), progress or NullProgress())


def _run_cutover(plan: Plan, config: Config, topo: TopologyAPI, options: CutoverOptions,
                 progress: ProgressSink) -> CutoverReport:
    ctx = MoveContext.create(plan, config)
    report = CutoverReport(plan.move_key, str(plan.org), plan.from_cell, plan.to_cell, dry_run=options.dry_run)
    ttl = options.lease_ttl_s or config.defaults.lease_ttl_s
    drain_timeout = options.drain_timeout_s or config.defaults.lock_timeout_s

    with ctx.control("cutover") as (src, dst):
        if _already_committed(dst, report):
            return report
        if options.dry_run:
            previous = state.get_move(dst, plan.move_key)
            if previous is not None and previous.state == state.MoveState.CUTOVER:
                report.checks["an interrupted cutover is pending"] = (
                    "yes: a real cutover (or rollback) first finishes or aborts it")
        else:
            finished = _finish_or_abort_previous(ctx, src, dst, topo)
            if finished is not None:
                return finished
        report.checks.update(_preconditions(ctx, src, dst, topo))
        if options.dry_run:
            dirty, seconds, _ = checksum_round(ctx, all_chunks(ctx, dst), options.workers, progress,
                                               "dry run: checksums")
            # Informational, not a check: the cutover's sync re-copies dirty chunks itself.
            report.checks["chunks the sync will re-copy"] = len(dirty)
            report.estimated_freeze_s = freeze_estimate(seconds, _time_topology_call(topo, plan))
            report.checks["estimated freeze s"] = round(report.estimated_freeze_s, 3)
            report.checks["fits --max-freeze"] = report.estimated_freeze_s <= options.max_freeze_s
            report.checks["foreign keys clean now"] = fkcheck.check_foreign_keys(dst, plan).clean
            return report

        # 0. pre-sync while writable, and the freeze estimate. A move copied with change capture
        # catches up from its slot (stream_cutover.py); one copied without it (before change
        # capture existed) falls back to checksum rounds.
        t0 = time.monotonic()
        stream = StreamCutover(ctx) if capture_setup.move_has_capture(state.get_move(dst, plan.move_key)) else None
        try:
            return _fence_and_flip(ctx, src, dst, topo, options, progress, report, stream, t0, ttl, drain_timeout)
        finally:
            if stream is not None:
                stream.close()


def _fence_and_flip(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any],
                    topo: TopologyAPI, options: CutoverOptions, progress: ProgressSink, report: CutoverReport,
                    stream: StreamCutover | None, t0: float, ttl: float, drain_timeout: float) -> CutoverReport:
    plan = ctx.plan
    if stream is not None:
        last = state.get_move(dst, plan.move_key)
        if last is not None and last.get("verify_clean") is False:
            # The final check covers only what the stream touched: differences the last verify
            # found elsewhere (a row changed on the target by hand) are re-copied first, while
            # the organization is still writable; the stream then carries on from there.
            # One pass: what is still dirty afterwards is in flight (the stream lags writes); the
            # stream and the final check take it from there.
            sync_until_clean(ctx, dst, options, progress, None, report, 1000)
            report.steps.append({"step": "resync", "seconds": time.monotonic() - t0,
                                 "detail": f"{report.sync_rounds} rounds, {report.rows_resynced} rows"})
        took = stream.pre_sync(options.max_freeze_s)
        report.steps.append({"step": "pre-sync", "seconds": time.monotonic() - t0,
                             "detail": f"stream caught up, last catch-up {took:.3f}s"})
        # The freeze to expect: the last catch-up (what the fenced apply will take) and the
        # Topology calls inside the window, both measured now.
        _refuse_unless_it_fits(freeze_estimate(took, _time_topology_call(topo, plan)), options, report,
                               f"the last catch-up took {took:.3f}s")
        # The FK check scans the org: done while writable. Under the fence the stream only applies
        # what the source (which enforces its FKs) committed, and the final check compares those rows.
        t_fk = time.monotonic()
        fks = fkcheck.check_foreign_keys(dst, plan)
        report.steps.append({"step": "foreign keys", "seconds": time.monotonic() - t_fk,
                             "detail": f"{fks.checked} foreign keys, {len(fks.dangling)} dangling"})
        fkcheck.raise_if_dangling(fks, plan)
    else:
        clean, verify_s, _ = sync_until_clean(ctx, dst, options, progress, None, report, 1000)
        report.steps.append({"step": "pre-sync", "seconds": time.monotonic() - t0,
                             "detail": f"{report.sync_rounds} rounds, {report.rows_resynced} rows"})
        _refuse_unless_it_fits(freeze_estimate(verify_s, _time_topology_call(topo, plan)), options, report,
                               f"a checksum pass takes {verify_s:.3f}s",
                               "add --workers when the checksum pass dominates, ")

    if options.reverse_stream:
        with db.wrap_errors(ctx.target, "creating the reverse stream"):
            reverse.prepare(src, dst, plan)
    # 1. lease
    mv = topo.begin_move(plan_org_key(plan), plan.from_cell, plan.to_cell, ttl)
    report.topology_move_id = str(mv.move_id)
    report.fencing_token = int(mv.fencing_token)
    state.update_move(dst, plan.move_key, state=state.MoveState.CUTOVER, topology_move_id=str(mv.move_id),
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
        t_sync = time.monotonic()
        if stream is not None:
            # 3. apply through the source's position after the fence, 4. check what the
            # stream touched (not the whole org).
            stream.apply_through_fence(src, max(0.1, t_fence + options.max_freeze_s - time.monotonic()))
            failpoint("cutover.after_apply")
            report.steps.append({"step": "apply", "seconds": time.monotonic() - t_sync,
                                 "detail": f"through {lsn_to_str(stream.fence_lsn)}"})
            t_check = time.monotonic()
            checked = touched_check(ctx, src, dst)
            report.verify_seconds = checked.seconds
            report.steps.append({"step": "final check", "seconds": time.monotonic() - t_check,
                                 "detail": f"{checked.rows} rows the stream touched in {checked.tables} tables"})
        else:
            _checksum_final(ctx, dst, options, progress, report, t_fence)
        if time.monotonic() - t_fence > options.max_freeze_s:
            raise CutoverAborted(
                f"the freeze passed --max-freeze {options.max_freeze_s:g}s before the flip",
                fix="raise --max-freeze or cut over at a quieter time; the org stays on the source",
            )
        failpoint("cutover.before_commit")
        # Both Cells must answer right before the flip: never hand the org to a target that
        # is down, nor leave a source we cannot fence for good.
        for name, conn in ((ctx.source, src), (ctx.target, dst)):
            with db.wrap_errors(name, "health check before the flip"):
                conn.execute("SELECT 1")
        topo.renew(mv.move_id, mv.fencing_token, ttl)
        # The source fence becomes permanent before the flip: should the mover die right after
        # the flip, no write can land on the source once the target owns the org.
        make_fence_permanent(src, str(plan.org))
        if options.reverse_stream:
            reverse.mark_flip(src, dst, plan)
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
    if stream is not None:
        # The stream is finished: its slot must not keep WAL on the old owner.
        stream.close()
        capture_setup.drop_capture(ctx, src, dst)
        state.forget_capture(dst, plan.move_key)
        state.record_event(dst, plan.move_key, "capture_dropped", "slot and publication dropped after the flip")
    return report


def _checksum_final(ctx: MoveContext, dst: psycopg.Connection[Any], options: CutoverOptions,
                    progress: ProgressSink, report: CutoverReport, t_fence: float) -> None:
    """The fallback under the fence: sync until clean (the last clean round is the final verify)
    and the FK check."""
    plan = ctx.plan
    t_sync = time.monotonic()
    deadline = t_fence + options.max_freeze_s
    clean, verify_s, final = sync_until_clean(ctx, dst, options, progress, deadline, report, 2000, fenced=True)
    report.verify_seconds = verify_s
    report.steps.append({"step": "sync", "seconds": time.monotonic() - t_sync,
                         "detail": f"final verify {verify_s:.3f}s"})
    if not clean:
        raise VerificationMismatch(
            f"the target did not become equal to the source within the freeze "
            f"({final.mismatched_chunks if final else '?'} chunks still differ); aborted",
            fix="run `orgmove verify` for the differing rows; the org stays on the source",
        )
    # Writing as a replica skipped the target's FK triggers: one anti-join per foreign key
    # over the org's rows, after the last re-copy and before the flip (exit 3, no flip).
    t_fk = time.monotonic()
    fks = fkcheck.check_foreign_keys(dst, plan)
    report.steps.append({"step": "foreign keys", "seconds": time.monotonic() - t_fk,
                         "detail": f"{fks.checked} foreign keys, {len(fks.dangling)} dangling"})
    fkcheck.raise_if_dangling(fks, plan)


def _commit(topo: TopologyAPI, mv: Move, expected_owner: str) -> Move:
    """Commit; after a lost answer, read the move back rather than guess."""
    try:
        return topo.commit_move(mv.move_id, mv.fencing_token, expected_owner)
    except TopologyUnavailable:
        current = topo.get_move(mv.move_id)
        if current.status == "committed":
            return current
        raise


def _after_commit(ctx: MoveContext, dst: psycopg.Connection[Any], freeze: float,
                  report: CutoverReport) -> None:
    plan = ctx.plan
    if fence_function_installed(dst):
        lift_fence(dst, str(plan.org))  # a move back may have left one: the target is writable now
    state.update_move(dst, plan.move_key, state=state.MoveState.COMMITTED, committed_at=state.db_now(dst),
                      freeze_window_s=freeze, verify_clean=True, verify_seconds=report.verify_seconds)
    state.record_event(dst, plan.move_key, "committed", "claims flipped to the target",
                       freeze_window_s=round(freeze, 3))
    log(logging.INFO, "cutover committed", move=plan.move_key, freeze_window_s=round(freeze, 3),
        new_owner=plan.to_cell)


def _abort(ctx: MoveContext, src: psycopg.Connection[Any], dst: psycopg.Connection[Any], topo: TopologyAPI,
           mv: Move, reason: str) -> None:
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
        state.update_move(dst, plan.move_key, state=state.MoveState.ABORTED, last_error=reason[:2000])
        state.record_event(dst, plan.move_key, "aborted", reason[:2000], problems=problems)
    except Exception as exc:
        problems.append(f"record abort: {exc}")
    if problems:
        log(logging.ERROR, "abort incomplete: " + "; ".join(problems), move=plan.move_key)


def _finish_or_abort_previous(ctx: MoveContext, src: psycopg.Connection[Any],
                              dst: psycopg.Connection[Any], topo: TopologyAPI) -> CutoverReport | None:
    """A previous cutover died (kill -9): finish it if the flip happened (its report is returned),
    otherwise abort it (None: go on with a new cutover)."""
    plan = ctx.plan
    move = state.get_move(dst, plan.move_key)
    if move is None or move.state != state.MoveState.CUTOVER or not move.get("topology_move_id"):
        return None
    previous = topo.get_move(move.get("topology_move_id"))
    if previous.status == "committed":
        if has_fence(src, str(plan.org)):
            make_fence_permanent(src, str(plan.org))
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
    state.update_move(dst, plan.move_key, state=state.MoveState.COPIED)
    return None
