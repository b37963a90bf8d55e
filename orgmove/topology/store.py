"""The Topology Service's storage on its own PostgreSQL database: one pool shared by the cells,
claims and leases (:mod:`orgmove.topology.claims`) and the move leases
(:mod:`orgmove.topology.moves`). The API models are in :mod:`orgmove.topology.models`.
"""

from __future__ import annotations

from orgmove.topology.claims import ClaimStore
from orgmove.topology.database import DEFAULT_POOL_SIZE, DEFAULT_WAIT_TIMEOUT_S, Database
from orgmove.topology.moves import MoveStore


class Store:
    """``claims`` and ``moves`` over one bounded pool (``pool_size`` connections at most; a
    request waits up to ``pool_wait_timeout_s`` for one, then gets a retryable 503)."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    ) -> None:
        self.db = Database(dsn, max_size=pool_size, wait_timeout_s=pool_wait_timeout_s)
        self.claims = ClaimStore(self.db)
        self.moves = MoveStore(self.db)

    def ensure_schema(self) -> None:
        self.db.ensure_schema()

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.close()
