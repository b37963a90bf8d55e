"""Observability: structured logs (human or JSON) with secrets redacted, progress bars, metrics."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, write_to_textfile
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from orgmove.config import redact

LOG = logging.getLogger("orgmove")


def scrub_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace each secret where it stands alone (not inside a longer word)."""
    for secret in secrets:
        if secret:
            text = re.sub(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", "***", text)
    return text


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def scrub(self, text: str) -> str:
        return scrub_secrets(redact(text), self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key.startswith("om_") and isinstance(value, str):
                record.__dict__[key] = self.scrub(value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key.startswith("om_"):
                doc[key[3:]] = value
        return json.dumps(doc, default=str)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k[3:]}={v}" for k, v in record.__dict__.items() if k.startswith("om_")
        )
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        return f"{ts} {record.levelname.lower():7} {record.getMessage()}" + (f"  [{extras}]" if extras else "")


def setup_logging(*, fmt: str = "human", debug: bool = False, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger("orgmove")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False


def add_secrets(secrets: Iterable[str]) -> None:
    for handler in logging.getLogger("orgmove").handlers:
        for flt in handler.filters:
            if isinstance(flt, RedactingFilter):
                flt.secrets.extend(s for s in secrets if s)


def log(level: int, msg: str, **fields: Any) -> None:
    LOG.log(level, msg, extra={f"om_{k}": v for k, v in fields.items()})


# --- progress -----------------------------------------------------------------------------------


class ProgressSink(Protocol):
    def start(self, phase: str, tables: dict[str, int], total_bytes: int = 0) -> None: ...
    def advance(self, table: str, rows: int, nbytes: int = 0) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, phase: str, tables: dict[str, int], total_bytes: int = 0) -> None:
        pass

    def advance(self, table: str, rows: int, nbytes: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class RichProgress:
    """Per-table and overall rows with rate and ETA, on stderr; only when stderr is a terminal
    (or when forced), so it never mixes into ``--json`` output on stdout."""

    def __init__(self, console: Console | None = None, per_table_limit: int = 6) -> None:
        self.console = console or Console(stderr=True)
        self.per_table_limit = per_table_limit
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._tasks: dict[str, TaskID] = {}
        self._bytes = 0

    def start(self, phase: str, tables: dict[str, int], total_bytes: int = 0) -> None:
        self.finish()
        self._progress = Progress(
            TextColumn("{task.description:<34}"),
            BarColumn(bar_width=24),
            TextColumn("{task.completed:>10,.0f}/{task.total:<10,.0f} rows"),
            TextColumn("{task.fields[size]:>9}"),
            TextColumn("{task.fields[rate]:>12}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )
        self._progress.start()
        total = max(sum(tables.values()), 1)
        self._overall = self._progress.add_task(f"[bold]{phase}: all tables", total=total, rate="", size="")
        self._bytes = 0
        self._tasks = {}
        biggest = sorted(tables.items(), key=lambda kv: -kv[1])[: self.per_table_limit]
        for table, rows in biggest:
            self._tasks[table] = self._progress.add_task(f"  {table}", total=max(rows, 1), rate="", size="")

    def advance(self, table: str, rows: int, nbytes: int = 0) -> None:
        if self._progress is None or self._overall is None:
            return
        self._progress.advance(self._overall, rows)
        self._bytes += nbytes
        task = self._progress.tasks[self._overall]
        if task.elapsed:
            self._progress.update(self._overall, rate=f"{task.completed / task.elapsed:,.0f} r/s",
                                  size=f"{self._bytes / 1e6:,.1f} MB" if self._bytes else "")
        tid = self._tasks.get(table)
        if tid is not None:
            self._progress.advance(tid, rows)

    def finish(self) -> None:
        if self._progress is not None:
            for tid in self._tasks.values():
                t = self._progress.tasks[tid]
                if t.total is not None and t.completed < t.total:
                    self._progress.update(tid, total=t.completed)
            if self._overall is not None:
                t = self._progress.tasks[self._overall]
                self._progress.update(self._overall, total=max(t.completed, 1))
            self._progress.stop()
        self._progress = None


class LogProgress:
    """Progress without a terminal (CI, cron, a job's log): one log line every ``every_s`` seconds
    with rows, rate, percent and ETA of the phase, and one when it ends."""

    def __init__(self, every_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.phase = ""
        self.total = 0
        self.done = 0
        self.started = 0.0
        self.last = 0.0
        self.active = False
        self.lines = 0

    def start(self, phase: str, tables: dict[str, int], total_bytes: int = 0) -> None:
        self.phase, self.total, self.done = phase, max(sum(tables.values()), 0), 0
        self.started = self.last = self.clock()
        self.active = True
        self.lines = 0

    def line(self) -> dict[str, Any]:
        """The facts of one progress line (pure; also used by the tests)."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        percent = min(100.0, 100.0 * self.done / self.total) if self.total else 100.0
        left = max(self.total - self.done, 0)
        eta = left / rate if rate > 0 else None
        return {"phase": self.phase, "rows": self.done, "total": self.total, "percent": round(percent, 1),
                "rows_per_s": round(rate, 1), "eta_s": None if eta is None else round(eta, 1)}

    def _emit(self, final: bool = False) -> None:
        f = self.line()
        eta = "-" if f["eta_s"] is None else f"{f['eta_s']:,.0f}s"
        log(logging.INFO, f"{f['phase']} {'done' if final else 'progress'}: {f['rows']:,} of ~{f['total']:,} rows "
            f"({f['percent']:.0f}%), {f['rows_per_s']:,.0f} rows/s, ETA {eta}", **f)

    def advance(self, table: str, rows: int, nbytes: int = 0) -> None:
        if not self.active:
            return
        self.done += rows
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.lines += 1
            self._emit()

    def finish(self) -> None:
        # A closing line only after progress lines (short phases stay quiet), and none while an
        # error or Ctrl-C propagates (finish runs in `finally:`): the error is what to read.
        if self.active and self.lines and sys.exc_info()[0] is None:
            self._emit(final=True)
        self.active = False


def make_progress(enabled: bool, every_s: float = 10.0) -> ProgressSink:
    """A progress bar in a terminal; log lines every ``every_s`` seconds without one (or with
    --json: they go to stderr, never into the JSON document on stdout)."""
    if enabled and sys.stderr.isatty():
        return RichProgress()
    return LogProgress(every_s)


# --- metrics ------------------------------------------------------------------------------------


# The one list of orgmove's metrics: (name as exposed, kind, labels, help). Counters are exposed
# with the `_total` suffix Prometheus adds; docs/architecture.md "Observability" lists exactly
# these names (tests/unit/test_metrics_docs.py compares them).
METRIC_SPECS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("orgmove_rows_copied_total", "counter", ("move", "table"), "Rows copied to the target"),
    ("orgmove_bytes_copied_total", "counter", ("move", "table"), "COPY bytes streamed to the target"),
    ("orgmove_rows_planned", "gauge", ("move", "table"),
     "Rows the copy expects (the plan's estimates): rows_copied_total / rows_planned is the share done"),
    ("orgmove_chunks_done_total", "counter", ("move",), "Chunks committed"),
    ("orgmove_chunks_planned", "gauge", ("move",), "Chunks of the copy, done or not"),
    ("orgmove_chunks_failed_total", "counter", (), "Chunk attempts that failed"),
    ("orgmove_retries_total", "counter", (), "Retries after transient errors"),
    ("orgmove_verify_mismatches_total", "counter", (), "Chunks whose checksums differ"),
    ("orgmove_freeze_window_seconds", "gauge", (), "Write freeze of the last cutover"),
    ("orgmove_step_duration_seconds", "histogram", ("step",), "Duration of each step"),
    # The rebalancer (orgmove/rebalance/): refreshed by every worker.
    ("orgmove_rebalance_queue_depth", "gauge", (), "Rebalance moves queued, not started"),
    ("orgmove_rebalance_moves_running", "gauge", (), "Rebalance moves running"),
    ("orgmove_rebalance_bytes_moved_total", "counter", (), "Bytes copied by finished rebalance moves"),
    # The stream catch-up (orgmove/catchup.py): `orgmove sync` and the cutover's pre-sync.
    ("orgmove_sync_lag_bytes", "gauge", (), "Source WAL not yet applied on the target"),
    ("orgmove_sync_lag_seconds", "gauge", (), "Age of the oldest change not yet applied"),
    ("orgmove_sync_applied_lsn", "gauge", (), "Source LSN applied on the target (as a number)"),
    ("orgmove_sync_changes_total", "counter", (), "Row changes applied by the stream"),
    ("orgmove_sync_changes_per_second", "gauge", (), "Row changes applied per second"),
)


class Metrics:
    """Prometheus metrics of one orgmove process, built from :data:`METRIC_SPECS`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        made: dict[str, Any] = {}
        for name, kind, labels, text in METRIC_SPECS:
            if kind == "counter":
                made[name] = Counter(name.removesuffix("_total"), text, list(labels), registry=self.registry)
            elif kind == "gauge":
                made[name] = Gauge(name, text, list(labels), registry=self.registry)
            else:
                made[name] = Histogram(name, text, list(labels), registry=self.registry,
                                       buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600))
        self.rows_copied = made["orgmove_rows_copied_total"]
        self.bytes_copied = made["orgmove_bytes_copied_total"]
        self.rows_planned = made["orgmove_rows_planned"]
        self.chunks_done = made["orgmove_chunks_done_total"]
        self.chunks_planned = made["orgmove_chunks_planned"]
        self.chunks_failed = made["orgmove_chunks_failed_total"]
        self.retries = made["orgmove_retries_total"]
        self.verify_mismatches = made["orgmove_verify_mismatches_total"]
        self.freeze_window = made["orgmove_freeze_window_seconds"]
        self.step_seconds = made["orgmove_step_duration_seconds"]
        self.rebalance_queue_depth = made["orgmove_rebalance_queue_depth"]
        self.rebalance_moves_running = made["orgmove_rebalance_moves_running"]
        self.rebalance_bytes_moved = made["orgmove_rebalance_bytes_moved_total"]
        self.sync_lag_bytes = made["orgmove_sync_lag_bytes"]
        self.sync_lag_seconds = made["orgmove_sync_lag_seconds"]
        self.sync_applied_lsn = made["orgmove_sync_applied_lsn"]
        self.sync_changes = made["orgmove_sync_changes_total"]
        self.sync_changes_per_s = made["orgmove_sync_changes_per_second"]

    def exposed_names(self) -> set[str]:
        """The metric family names as a scrape shows them (counters with `_total`)."""
        names = set()
        for family in self.registry.collect():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
        return names

    def write_textfile(self, path: str) -> None:
        write_to_textfile(path, self.registry)


METRICS = Metrics()
