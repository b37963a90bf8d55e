"""What every command that executes a plan needs: the two Cells' DSNs, named control
connections, and the check that the plan still matches both Cells' schemas."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg

from orgmove import db
from orgmove.config import Config
from orgmove.errors import StalePlan
from orgmove.plan import Plan


@dataclass
class MoveContext:
    plan: Plan
    config: Config
    source_dsn: str
    target_dsn: str

    @classmethod
    def create(cls, plan: Plan, config: Config) -> MoveContext:
        return cls(plan, config, config.cell_dsn(plan.from_cell), config.cell_dsn(plan.to_cell))

    @property
    def source(self) -> str:
        return self.plan.from_cell

    @property
    def target(self) -> str:
        return self.plan.to_cell

    def app_name(self, role: str) -> str:
        return f"orgmove/{self.plan.move_key}/{role}"

    def connect_source(self, role: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        d = self.config.defaults
        return db.connect(
            self.source_dsn, cell=self.source, application_name=self.app_name(role),
            autocommit=autocommit, statement_timeout_s=d.statement_timeout_s,
            lock_timeout_s=d.lock_timeout_s,
        )

    def connect_target(self, role: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        d = self.config.defaults
        return db.connect(
            self.target_dsn, cell=self.target, application_name=self.app_name(role),
            autocommit=autocommit, statement_timeout_s=d.statement_timeout_s,
            lock_timeout_s=d.lock_timeout_s,
        )

    @contextlib.contextmanager
    def control(self, role: str = "control") -> Iterator[tuple[psycopg.Connection[Any], psycopg.Connection[Any]]]:
        src = self.connect_source(role)
        try:
            dst = self.connect_target(role)
            try:
                yield src, dst
            finally:
                dst.close()
        finally:
            src.close()

    def check_fingerprints(self, src: psycopg.Connection[Any], dst: psycopg.Connection[Any]) -> None:
        """Refuse a plan whose tables changed on either Cell since it was made."""
        from orgmove.catalog import schema_fingerprint

        tables = [s.table for s in self.plan.steps]
        with db.wrap_errors(self.source, "schema fingerprint"):
            source_now = schema_fingerprint(src, tables)
        with db.wrap_errors(self.target, "schema fingerprint"):
            target_now = schema_fingerprint(dst, tables)
        changed = []
        if self.plan.source_fingerprint and source_now != self.plan.source_fingerprint:
            changed.append(f"source cell {self.source!r}")
        if self.plan.target_fingerprint and target_now != self.plan.target_fingerprint:
            changed.append(f"target cell {self.target!r}")
        if changed:
            raise StalePlan(
                f"the schema of the planned tables changed on the {' and the '.join(changed)} "
                f"since plan {self.plan.move_key} was made",
                fix="make a new plan with `orgmove plan` (and finish or roll back any copy made "
                "with the old one)",
            )
