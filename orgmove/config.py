"""orgmove.toml: cells, the Topology Service, defaults.

```toml
[cells.cell-1]
dsn = "postgresql://orgmove:secret@db1:5432/gitlab"
[cells.cell-2]
dsn_env = "CELL2_DSN"          # the DSN is read from this environment variable

[topology]
url = "http://127.0.0.1:7480"
token_env = "ORGMOVE_TOPOLOGY_TOKEN"   # or token = "..."

[defaults]
workers = 2
chunk_rows = 50000
```

Path: global option ``--config FILE``, env ``ORGMOVE_CONFIG``, default ``./orgmove.toml``.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from orgmove.errors import ConfigError
from orgmove.rebalance.policy import RebalancePolicy

DEFAULT_CONFIG_PATH = Path("orgmove.toml")
CONFIG_ENV = "ORGMOVE_CONFIG"


class CellConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsn: str | None = None
    dsn_env: str | None = None
    # Replicas are found through pg_stat_replication; this only overrides the lag threshold.
    max_replica_lag_s: float | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CellConfig:
        if bool(self.dsn) == bool(self.dsn_env):
            raise ValueError("give exactly one of `dsn` or `dsn_env`")
        return self


class TopologyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str
    token: str | None = None
    token_env: str | None = None
    timeout_s: float = 10.0
    retry_deadline_s: float = 30.0  # how long transient failures of the service are retried


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workers: int = Field(default=2, ge=1, le=64)
    chunk_rows: int = Field(default=50_000, ge=1)
    rate_rows_per_s: float | None = Field(default=None, gt=0)
    max_replica_lag_s: float = Field(default=30.0, gt=0)
    statement_timeout_s: float = Field(default=0, ge=0)
    lock_timeout_s: float = Field(default=5.0, gt=0)
    lease_ttl_s: float = Field(default=600.0, gt=0)
    max_freeze_s: float = Field(default=300.0, gt=0)
    # WAL a move's replication slot may keep on the source before the guard stops the move and
    # drops the slot (orgmove/capture_guard.py): a dead move must never fill the source's disk.
    max_retained_wal_mb: float = Field(default=10_240.0, gt=0)
    plans_dir: str = "plans"
    rules: str | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cells: dict[str, CellConfig] = Field(default_factory=dict)
    topology: TopologyConfig | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    rebalance: RebalancePolicy = Field(default_factory=RebalancePolicy)
    source_path: str | None = Field(default=None, exclude=True)

    def cell_dsn(self, name: str) -> str:
        cell = self.cells.get(name)
        if cell is None:
            known = ", ".join(sorted(self.cells)) or "none"
            raise ConfigError(
                f"unknown cell {name!r} (cells in {self.source_path or 'the config'}: {known})",
                fix=f"use one of the configured cells or add a [cells.{name}] table with a dsn",
            )
        if cell.dsn:
            return cell.dsn
        assert cell.dsn_env is not None
        value = os.environ.get(cell.dsn_env)
        if not value:
            raise ConfigError(
                f"cell {name!r} takes its DSN from the environment variable {cell.dsn_env}, "
                "which is not set",
                fix=f"export {cell.dsn_env}=postgresql://... before running orgmove",
            )
        return value

    def replica_lag_threshold(self, cell: str) -> float:
        """Seconds of replica lag on ``cell`` above which a copy pauses."""
        cell_conf = self.cells.get(cell)
        if cell_conf is not None and cell_conf.max_replica_lag_s is not None:
            return cell_conf.max_replica_lag_s
        return self.defaults.max_replica_lag_s

    def topology_token(self) -> str | None:
        if self.topology is None:
            return None
        if self.topology.token:
            return self.topology.token
        if self.topology.token_env:
            return os.environ.get(self.topology.token_env)
        return None

    def secrets(self) -> list[str]:
        """Every secret the config holds, for the log redactor."""
        found: list[str] = []
        for name in self.cells:
            try:
                dsn = self.cell_dsn(name)
            except ConfigError:
                continue
            pw = dsn_password(dsn)
            if pw:
                found.append(pw)
        token = self.topology_token()
        if token:
            found.append(token)
        return found


def config_path(explicit: str | Path | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return DEFAULT_CONFIG_PATH


def _format_validation_error(path: Path, err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"])
        parts.append(f"{loc}: {item['msg']}")
    return f"{path}: " + "; ".join(parts)


def load_config(explicit: str | Path | None = None, *, required: bool = True) -> Config:
    path = config_path(explicit)
    if not path.exists():
        if not required:
            return Config()
        raise ConfigError(
            f"config file {path} does not exist",
            fix="pass --config FILE, set ORGMOVE_CONFIG, or run `orgmove sandbox up` and "
            "`eval $(orgmove sandbox env)` for a local sandbox",
        )
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML ({exc})",
            fix="correct the syntax at that line; see docs/configuration.md for the format",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", fix="check the path") from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            "invalid config " + _format_validation_error(path, exc),
            fix="correct those keys; cells take `dsn` or `dsn_env`, see docs/configuration.md",
        ) from None
    config.source_path = str(path)
    _warn_if_world_readable(path, config)
    return config


def _warn_if_world_readable(path: Path, config: Config) -> None:
    has_inline_secret = any(
        c.dsn and dsn_password(c.dsn) for c in config.cells.values()
    ) or bool(config.topology and config.topology.token)
    if not has_inline_secret:
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        print(
            f"warning: {path} holds passwords or tokens and is readable by other users "
            f"(mode {stat.S_IMODE(mode):o}); run `chmod 600 {path}` or use dsn_env/token_env",
            file=sys.stderr,
        )


_PASSWORD_IN_URL = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]+)(@)")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def dsn_password(dsn: str) -> str | None:
    m = _PASSWORD_IN_URL.search(dsn)
    if m:
        return m.group(2)
    m = _PASSWORD_KV.search(dsn)
    if m:
        return m.group(2).strip("'")
    return None


def redact(text: str) -> str:
    """Remove passwords from DSNs in ``text``."""
    text = _PASSWORD_IN_URL.sub(r"\1***\3", text)
    return _PASSWORD_KV.sub(r"\1***", text)
