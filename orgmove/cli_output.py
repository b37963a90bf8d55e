"""Human rendering of the CLI's results (tables and summaries); the --json documents are built by
the commands themselves. Pure presentation: nothing here talks to a database."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from orgmove.cli_common import out


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def print_plan(the_plan: Any, path: Any, ownership_checked: bool) -> None:
    table = Table(title=f"plan {the_plan.move_key} -> {path}")
    for col in ("#", "table", "est. rows", "est. bytes", "key", "filter"):
        table.add_column(col, overflow="fold")
    for i, step in enumerate(the_plan.steps, 1):
        table.add_row(str(i), step.table, f"{step.estimated_rows:,}", human_bytes(step.estimated_bytes),
                      ",".join(step.key) or "(whole set)", step.filter_sql[:90])
    out.print(table)
    print_triggers(the_plan)
    out.print(f"{len(the_plan.steps)} tables to copy, "
              f"{sum(s.estimated_rows for s in the_plan.steps):,} rows estimated; "
              f"{len(the_plan.skipped)} skipped; "
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
        return
    out.print(f"copied {report.rows:,} rows ({human_bytes(report.bytes)}) in {report.seconds:.1f}s "
              f"({report.rows_per_s:,.0f} rows/s); chunks: {report.chunks_copied} copied, "
              f"{report.chunks_skipped} already done; snapshot consistent: "
              f"{report.snapshot_consistent}")
    out.print(f"next: orgmove verify {plan_file}")


def print_verify(report: Any) -> None:
    table = Table(title=f"verify {report.move_key}")
    for col in ("table", "rows source", "rows target", "chunks", "mismatched", "examples"):
        table.add_column(col, overflow="fold")
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


def print_status(doc: dict[str, Any]) -> None:
    for mv in doc["moves"] or [{}]:
        for k, v in mv.items():
            out.print(f"{k:>20}: {v}")
    out.print(f"{'owner':>20}: {doc.get('owner')}")
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
