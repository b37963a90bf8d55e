"""Data-plane driver: the same binary COPY stream (org 1's p_ci_builds + notes + issues, about
850k rows) from the source into an index-free UNLOGGED sink on the target, with asyncpg and with
psycopg 3 (async), in turns. The sink has no indexes so the driver, not the target, is measured.

Usage: python bench/driver_stream.py [--runs 5]
Last line: ratio=<psycopg seconds / asyncpg seconds> (> 1: asyncpg is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import psycopg
from common import median, start_cells

from orgmove.chunking import WHOLE, select_chunk
from orgmove.plan import read_plan

TABLES = ("public.p_ci_builds", "public.notes", "public.issues")


async def with_asyncpg(src_dsn: str, dst_dsn: str, jobs: list[tuple[str, str, list[str]]]) -> int:
    src = await asyncpg.connect(src_dsn)
    dst = await asyncpg.connect(dst_dsn)
    total = 0
    for select, sink, cols in jobs:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=32)

        async def produce(select: str = select, queue: asyncio.Queue[bytes | None] = queue) -> None:
            await src.copy_from_query(select, output=queue.put, format="binary")
            await queue.put(None)

        async def blocks(queue: asyncio.Queue[bytes | None] = queue):  # type: ignore[no-untyped-def]
            while (b := await queue.get()) is not None:
                yield b

        _, status = await asyncio.gather(produce(), dst.copy_to_table(sink, columns=cols, source=blocks(),
                                                                       format="binary"))
        total += int(status.split()[-1])
    await src.close()
    await dst.close()
    return total


async def with_psycopg(src_dsn: str, dst_dsn: str, jobs: list[tuple[str, str, list[str]]]) -> int:
    src = await psycopg.AsyncConnection.connect(src_dsn, autocommit=True)
    dst = await psycopg.AsyncConnection.connect(dst_dsn, autocommit=True)
    total = 0
    for select, sink, cols in jobs:
        collist = ", ".join(f'"{c}"' for c in cols)
        async with src.cursor().copy(f"COPY ({select}) TO STDOUT (FORMAT binary)") as out:  # type: ignore[arg-type]
            async with dst.cursor() as cur:
                async with cur.copy(f'COPY {sink} ({collist}) FROM STDIN (FORMAT binary)') as inp:  # type: ignore[arg-type]
                    async for block in out:
                        await inp.write(block)
                total += cur.rowcount
    await src.close()
    await dst.close()
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cells = start_cells("large")
    import tempfile
    from pathlib import Path

    from common import make_plan

    plan, _ = make_plan(cells, Path(tempfile.mkdtemp(prefix="orgmove-bench-driver-")))
    plan = read_plan(_)
    src_dsn = cells.dsn("cell-1", "gitlab")
    dst_dsn = cells.dsn("cell-2", "postgres")
    jobs = []
    with psycopg.connect(dst_dsn, autocommit=True) as conn:
        for table in TABLES:
            step = plan.step(table)
            sink = "sink_" + step.name
            cols = ", ".join(f'"{c}" {t}' for c, t in zip(step.columns, step.column_types, strict=True))
            conn.execute(f"DROP TABLE IF EXISTS {sink}; CREATE UNLOGGED TABLE {sink} ({cols})")  # type: ignore[arg-type]
            jobs.append((select_chunk(step, plan.root, plan.org, WHOLE).as_string(None), sink, step.columns))
    a_times, p_times = [], []
    rows = 0
    for i in range(args.runs):
        for name, fn, times in (("asyncpg", with_asyncpg, a_times), ("psycopg", with_psycopg, p_times)):
            with psycopg.connect(dst_dsn, autocommit=True) as conn:
                for _, sink, _ in jobs:
                    conn.execute(f"TRUNCATE {sink}")  # type: ignore[arg-type]
            t = time.monotonic()
            rows = asyncio.run(fn(src_dsn, dst_dsn, jobs))
            times.append(time.monotonic() - t)
            print(f"run {i + 1} {name}: {times[-1]:.2f}s {rows / times[-1]:,.0f} rows/s")
    a, p = median(a_times), median(p_times)
    print(f"rows={rows} asyncpg median {a:.2f}s ({rows / a:,.0f} rows/s); psycopg median {p:.2f}s "
          f"({rows / p:,.0f} rows/s)")
    print(f"ratio={p / a:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
