"""The rebalancing policy: the ``[rebalance]`` table of orgmove.toml.

```toml
[rebalance]
band = 0.10                 # every Cell within +-10% of the mean org bytes
max_moves_per_cell = 1      # moves at once touching one Cell (as source or target)
max_moves_total = 2         # moves at once in total
pinned = ["42"]             # organizations that never move
no_new_orgs = ["cell-3"]    # Cells that take no new organizations
queue_dsn_env = "ORGMOVE_QUEUE_DSN"   # the Topology Service's database (procrastinate lives there)
```
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from orgmove.errors import ConfigError


class RebalancePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    band: float = Field(default=0.10, gt=0, lt=1)
    max_moves_per_cell: int = Field(default=1, ge=1)
    max_moves_total: int = Field(default=2, ge=1)
    max_moves_per_proposal: int = Field(default=100, ge=1)
    pinned: list[str] = Field(default_factory=list)
    no_new_orgs: list[str] = Field(default_factory=list)
    drain: list[str] = Field(default_factory=list)
    # Estimated copy speed, for the proposal's time estimates only.
    copy_bytes_per_s: float = Field(default=20e6, gt=0)
    cleanup: bool = False  # delete the source rows after a committed move
    queue_dsn: str | None = None
    queue_dsn_env: str | None = None
    max_attempts: int = Field(default=5, ge=1)
    retry_wait_s: int = Field(default=2, ge=0)  # exponential backoff base (2, 4, 8... seconds)
    # A job whose worker sent no heartbeat for this long is handed to another worker.
    stalled_after_s: float = Field(default=30.0, gt=0)
    heartbeat_s: float = Field(default=5.0, gt=0)
    max_freeze_s: float = Field(default=30.0, gt=0)
    workers_per_move: int = Field(default=2, ge=1, le=64)

    def queue_dsn_value(self) -> str:
        if self.queue_dsn:
            return self.queue_dsn
        if self.queue_dsn_env:
            value = os.environ.get(self.queue_dsn_env)
            if value:
                return value
            raise ConfigError(
                f"[rebalance] queue_dsn_env names {self.queue_dsn_env}, which is not set",
                fix=f"export {self.queue_dsn_env}=postgresql://... (the Topology Service's database)",
            )
        raise ConfigError(
            "the rebalancer needs the Topology Service's database for its job queue",
            fix="add queue_dsn_env (or queue_dsn) to the [rebalance] table of orgmove.toml",
        )
