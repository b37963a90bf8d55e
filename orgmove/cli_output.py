"""Human rendering of the CLI's results (tables and summaries); the --json documents are built by
the commands themselves. Pure presentation: nothing here talks to a database."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

from orgmove.cli_common import out


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def narrow_table(names: list[str], columns: list[tuple[str, str]]) -> Table:
    """A table for 80 columns. ``columns`` are ``(header, kind)``: kind "name" (the table names,
    never wrapped nor cut: the column is as wide as the longest), "number" (right-aligned, never
    wrapped) or "text" (wraps, like a filter, to whatever width is left)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header, kind in columns:
        if kind == "name":
            table.add_column(header, no_wrap=True, min_width=max([len(n) for n in names] + [len(header)]))
        elif kind == "number":
            table.add_column(header, no_wrap=True, justify="right")
        else:
            table.add_column(header, overflow="fold", ratio=1)
    return table


def print_plan(the_plan: Any, path: Any, ownership_checked: bool) -> None:
    out.print(f"plan {the_plan.move_key} -> {path}")
    table = narrow_table([s.table for s in the_plan.steps],
                         [("#", "number"), ("table", "name"), ("rows", "number"), ("size", "number"),
                          ("key", "text"), ("filter", "text")])
    for i, step in enumerate(the_plan.steps, 1):
        table.add_row(str(i), step.table, f"{step.estimated_rows:,}", human_bytes(step.estimated_bytes),
                      ", ".join(step.key) or "(whole set)", step.filter_sql)
    out.print(table)
    print_triggers(the_plan)
    out.print(f"{len(the_plan.steps)} tables to copy, "
              f"{sum(s.estimated_rows for s in the_plan.steps):,} rows estimated; "
              f"{len(the_plan.skipped)} skipped;\n"
              f"{len(the_plan.cluster_wide_refs)} cluster-wide references checked on the target.")
    if not ownership_checked:
        out.print("note: no Topology Service configured: the ownership check was skipped.")
    for warning in the_plan.warnings:
        out.print(f"[bold yellow]warning:[/bold yellow] {warning}")
    out.print(f"next: orgmove copy {path}")


def print_triggers(the_plan: Any) -> None:
    rows = [(s.table, t) for s in the_plan.steps for t in s.triggers]
    mode = "as a replica" if the_plan.replica_role else "as a plain client (--no-replica-role)"
    if not rows:
        out.print(f"target writes {mode}; no user triggers on the planned tables.")
        return
    table = Table(title=f"target triggers (the move writes {mode})")
    for col in ("table", "trigger", "timing", "enabled", "the move"):
        table.add_column(col, overflow="fold")
    for step_table, t in rows:
        on = t.table if t.table != step_table else step_table
        verdict = ("fires (allowed)" if t.allowed else "fires") if t.fires else "skipped"
        table.add_row(on, t.name, f"{t.timing} {'/'.join(t.events)} {t.level}", t.enabled, verdict)
    out.print(table)


def print_copy(report: Any, plan_file: Any) -> None:
    if report.dry_run:
        table = Table(title=f"dry run: copy {report.move_key} (nothing written)")
        for col in ("table", "est. rows", "est. bytes", "chunks", "already done"):
            table.add_column(col)
        for t in report.tables.values():
            table.add_row(t.table, f"{t.rows:,}", human_bytes(t.bytes), str(t.chunks), str(t.chunks_skipped))
        out.print(table)
        out.print(f"would copy ~{report.rows:,} rows ({human_bytes(report.bytes)}) in "
                  f"{report.chunks_total} chunks")
        if report.capture:
            cap = report.capture
            out.print(f"would create on {report.from_cell}: publication {cap['publication']}, logical slot "
                      f"{cap['slot']}; on {report.to_cell}: replication origin {cap['origin']}; "
                      f"REPLICA IDENTITY FULL: {', '.join(cap['replica_identity_full']) or 'none'}")
        return
    if report.already_done:
        out.print(f"already done: the copy of {report.move_key} finished earlier ({report.chunks_total:,} "
                  f"chunks); snapshot consistent: {report.snapshot_consistent}")
        out.print(f"next: orgmove verify {plan_file}")
        return
    out.print(f"copied {report.rows:,} rows ({human_bytes(report.bytes)}) in {report.seconds:.1f}s "
              f"({report.rows_per_s:,.0f} rows/s); chunks: {report.chunks_copied} copied, "
              f"{report.chunks_skipped} already done; snapshot consistent: "
              f"{report.snapshot_consistent}")
    out.print(f"next: orgmove verify {plan_file}")


def print_verify(report: Any) -> None:
    out.print(f"verify {report.move_key}")
    table = narrow_table(list(report.tables), [("table", "name"), ("source", "number"), ("target", "number"),
                                               ("chunks", "number"), ("differ", "number"), ("examples", "text")])
    for t in report.tables.values():
        ex = "; ".join(f"{e.kind} {e.key}" for e in t.examples[:3])
        table.add_row(t.table, f"{t.source_rows:,}", f"{t.target_rows:,}", str(t.chunks),
                      str(t.mismatched_chunks), ex)
    out.print(table)
    verdict = "EQUAL" if report.equal else "MISMATCH"
    out.print(f"{verdict}: {report.source_rows:,} rows on the source, {report.target_rows:,} on the "
              f"target, {report.seconds:.1f}s")


def print_foreign_keys(fks: Any) -> None:
    if fks.clean:
        out.print(f"foreign keys: {fks.checked} checked, none dangling ({fks.seconds:.2f}s)")
    for d in fks.dangling:
        out.print(f"[bold red]dangling:[/bold red] {d.table} {d.constraint} -> {d.ref_table}: "
                  f"{', '.join(d.keys)}")


def ms(seconds: float | None) -> str:
    """Durations for people: milliseconds below 10 s, else seconds."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _when(value: Any) -> str:
    return "-" if value in (None, "") else str(value).replace("T", " ")[:19]


def status_lines(doc: dict[str, Any]) -> list[str]:
    """``orgmove status`` for people: one aligned section per move, then the Topology's view."""
    lines: list[str] = []

    def row(label: str, value: Any) -> None:
        lines.append(f"  {label:<16} {value}")

    if not doc["moves"]:
        lines.append(f"no move of organization {doc['org']} is recorded on the cells")
    for mv in doc["moves"]:
        lines.append(f"move {mv['move']}: organization {mv['org']}, {mv['from']} -> {mv['to']}")
        row("state", mv["state"])
        chunks = mv.get("chunks") or {}
        row("chunks", f"{chunks.get('done', 0):,} of {chunks.get('total', 0):,} done")
        snapshots = mv.get("snapshots") or 0
        consistent = ("consistent" if mv.get("snapshot_consistent")
                      else "not consistent: the cutover's sync levels the difference")
        row("snapshots", f"{snapshots:,} ({consistent})")
        row("copy", f"started {_when(mv.get('copy_started_at'))}, finished {_when(mv.get('copy_finished_at'))}")
        clean = mv.get("verify_clean")
        verdict = "-" if clean is None else ("clean" if clean else "differences")
        row("verify", f"{verdict}, {ms(mv.get('verify_seconds'))}, at {_when(mv.get('verified_at'))}")
        row("fenced at", _when(mv.get("fenced_at")))
        row("committed at", _when(mv.get("committed_at")))
        row("freeze window", ms(mv.get("freeze_window_s")))
        if mv.get("topology_move_id"):
            row("topology move", f"{mv['topology_move_id']} (fencing token {mv.get('fencing_token')})")
        row("last error", mv.get("last_error") or "none")
        row("updated", _when(mv.get("updated_at")))
        events = mv.get("recent_events") or []
        row("recent events", "" if events else "none")
        for e in events:
            lines.append(f"    {_when(e['at'])}  {e['kind']:<16} {e['message']}")
    lines.append(f"organization {doc['org']} in the Topology Service")
    if doc.get("topology_error"):
        row("error", doc["topology_error"])
    row("owner", doc.get("owner") or "-")
    row("state", doc.get("org_state") or "-")
    lease = doc.get("lease")
    row("lease", "none" if not lease else
        f"{lease['status']} {lease['from']} -> {lease['to']}, token {lease['fencing_token']}, "
        f"expires {_when(lease['expires_at'])}")
    for cell, problem in (doc.get("unreachable_cells") or {}).items():
        lines.append(f"warning: cell {cell} did not answer: {problem}")
    return lines


def print_status(doc: dict[str, Any]) -> None:
    for line in status_lines(doc):
        out.print(line, markup=False)
    out.print(slots_text(doc), markup=False)


def slots_text(doc: dict[str, Any]) -> str:
    """The plain-text section ``orgmove status`` prints for the slots."""
    slots = doc.get("slots") or []
    if not slots:
        return "replication slots: none of orgmove's on any cell"
    lines = [f"replication slots (limit {doc.get('max_retained_wal_mb'):g} MB retained WAL):"]
    for s in slots:
        flag = "  OVER LIMIT" if s.get("over_limit") else ""
        lines.append(f"  {s['cell']:<10} {s['slot']:<40} {s['retained_wal_mb']:>10.1f} MB  "
                     f"{'active' if s['active'] else 'idle'} {s.get('wal_status') or ''}{flag}")
    return "\n".join(lines)
