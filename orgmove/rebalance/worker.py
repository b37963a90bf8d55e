"""``orgmove worker``: a procrastinate worker for the rebalance queue, and the recovery of jobs
whose worker died.

Any number of workers on any number of machines share the queue in the Topology Service's
database. Each sends procrastinate heartbeats; every ``heartbeat_s`` each worker also hands
back to the queue the jobs of workers silent for ``stalled_after_s`` (``get_stalled_jobs`` then
``retry_job``): the next attempt undoes what the dead one left and moves the organization
again. The same tick refreshes the queue-depth and moves-running gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from orgmove.config import Config
from orgmove.obs import METRICS, log
from orgmove.rebalance import jobs, queue, queuedb


class _OneLineJobErrors(logging.Filter):
    """procrastinate logs a failed job with its traceback; operators get the error's paragraph
    (the reason is in `orgmove rebalance status` too). ``--debug`` keeps the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage().splitlines()[0]}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def run_worker(config: Config, *, name: str | None = None, once: bool = False, debug: bool = False) -> None:
    # procrastinate's records go through orgmove's handlers (format, redaction of secrets).
    queue_log = logging.getLogger("procrastinate")
    queue_log.handlers[:] = list(logging.getLogger("orgmove").handlers)
    queue_log.setLevel(logging.DEBUG if debug else logging.INFO)
    queue_log.propagate = False
    if not debug:
        for handler in queue_log.handlers:
            handler.addFilter(_OneLineJobErrors())
    dsn = config.rebalance.queue_dsn_value()
    queuedb.ensure_schema(dsn)
    jobs.configure_worker(jobs.WorkerSettings(config=config, dsn=dsn, name=name or jobs.worker_name()))
    asyncio.run(_main(config, dsn, name or jobs.worker_name(), once))


async def _main(config: Config, dsn: str, name: str, once: bool) -> None:
    policy = config.rebalance
    app = queue.make_app(dsn)
    async with app.open_async():
        recovery = asyncio.create_task(_recover_stalled(app, dsn, policy.heartbeat_s, policy.stalled_after_s))
        try:
            await app.run_worker_async(
                queues=[queuedb.QUEUE], name=name, concurrency=1, wait=not once,
                update_heartbeat_interval=policy.heartbeat_s, stalled_worker_timeout=policy.stalled_after_s,
                fetch_job_polling_interval=1.0, delete_jobs="never",
            )
        finally:
            recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recovery


async def _recover_stalled(app: object, dsn: str, every_s: float, stalled_after_s: float) -> None:
    manager = app.job_manager  # type: ignore[attr-defined]
    while True:
        try:
            for job in await manager.get_stalled_jobs(queue=queuedb.QUEUE, seconds_since_heartbeat=stalled_after_s):
                log(logging.WARNING, "handing a stalled rebalance job back to the queue", job=job.id,
                    lock=job.lock)
                await manager.retry_job(job)
            summary = await asyncio.to_thread(queue.status, dsn)
            METRICS.rebalance_queue_depth.set(summary["queue_depth"])
            METRICS.rebalance_moves_running.set(summary["running"])
        except Exception as exc:  # keep recovering; the next tick may succeed
            log(logging.WARNING, "stalled-job recovery failed", error=str(exc))
        await asyncio.sleep(every_s)
