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


def make_progress(enabled: bool) -> ProgressSink:
    if enabled and sys.stderr.isatty():
        return RichProgress()
    return NullProgress()


# --- metrics ------------------------------------------------------------------------------------


class Metrics:
    """Prometheus metrics of one orgmove process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rows_copied = Counter(
            "orgmove_rows_copied", "Rows copied to the target", ["table"], registry=self.registry
        )
        self.bytes_copied = Counter(
            "orgmove_bytes_copied", "COPY bytes streamed to the target", ["table"], registry=self.registry
        )
        self.chunks_done = Counter("orgmove_chunks_done", "Chunks committed", registry=self.registry)
        self.chunks_failed = Counter("orgmove_chunks_failed", "Chunk attempts that failed", registry=self.registry)
        self.retries = Counter("orgmove_retries", "Retries after transient errors", registry=self.registry)
        self.verify_mismatches = Counter(
            "orgmove_verify_mismatches", "Chunks whose checksums differ", registry=self.registry
        )
        self.freeze_window = Gauge(
            "orgmove_freeze_window_seconds", "Write freeze of the last cutover", registry=self.registry
        )
        self.step_seconds = Histogram(
            "orgmove_step_duration_seconds", "Duration of each step", ["step"], registry=self.registry,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
        )

        self.sync_lag_bytes = Gauge("orgmove_sync_lag_bytes", "Source WAL not yet applied on the target",
                                    registry=self.registry)
        self.sync_lag_seconds = Gauge("orgmove_sync_lag_seconds", "Age of the oldest change not yet applied",
                                      registry=self.registry)
        self.sync_applied_lsn = Gauge("orgmove_sync_applied_lsn", "Source LSN applied on the target (as a number)",
                                      registry=self.registry)
        self.sync_changes = Counter("orgmove_sync_changes", "Row changes applied by the stream",
                                    registry=self.registry)
        self.sync_changes_per_s = Gauge("orgmove_sync_changes_per_second", "Row changes applied per second",
                                        registry=self.registry)

    def write_textfile(self, path: str) -> None:
        write_to_textfile(path, self.registry)


METRICS = Metrics()
