"""The plan: what `copy`, `verify` and `cutover` execute, and what an SRE reviews.

A plan is a JSON file (stable key order, one step per table in execution order). Each step names a
table, its copy columns in explicit order, its chunking key, and its row filter as *join paths* to
the root (`organizations.id = <org>`); the filter is rendered to SQL here, with the driver's
identifier and literal quoting, never by string formatting.

The file carries a checksum of its own content: a plan edited by hand is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orgmove.errors import PlanError, StalePlan

PLAN_FORMAT_VERSION = 1

OrgKey = int | str


class Hop(BaseModel):
    """From the current table: ``columns`` reference ``ref_table(ref_columns)``.

    With ``type_column``/``type_value`` the hop only holds for rows whose type column has that
    value (a polymorphic link such as ``noteable_type = 'Issue'``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    type_column: str | None = None
    type_value: str | None = None


class FilterPath(BaseModel):
    """A chain of hops from a table to the root. No hops: the table is the root itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hops: list[Hop] = Field(default_factory=list)
    source: str = ""  # why this path exists: "fk", "sharding_key", "polymorphic", "dictionary"


class Trigger(BaseModel):
    """A user trigger on a planned table (or one of its partitions) of the TARGET Cell, and what
    the move does about it (see :mod:`orgmove.triggers`)."""

    model_config = ConfigDict(extra="forbid")

    table: str  # the relation it is on: the step's table or one of its partitions
    name: str
    timing: Literal["BEFORE", "AFTER", "INSTEAD OF"]
    level: Literal["ROW", "STATEMENT"]
    events: list[str]  # INSERT, UPDATE, DELETE, TRUNCATE
    enabled: Literal["origin", "replica", "always", "disabled"]  # ALTER TABLE ... ENABLE [REPLICA|ALWAYS]
    function: str
    fires: bool  # fires while the move writes the org's rows
    allowed: bool = False  # named in --allow-triggers


class NullifiedReference(BaseModel):
    """Columns of a step that the copy writes as NULL where they reference a row outside the
    organization: the value is kept only when ``ref_table`` has a row of the organization
    (``ref_filter``) with that key. The same expression runs on both Cells in verify."""

    model_config = ConfigDict(extra="forbid")

    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    ref_filter: list[FilterPath]
    constraint: str = ""


class OrgReference(BaseModel):
    """A link between two organization tables that is not the row's ownership, so it may lead to
    another organization's row (a merge request from a fork). Checked by the pre-flight."""

    model_config = ConfigDict(extra="forbid")

    table: str
    columns: list[str]
    ref_table: str
    ref_columns: list[str]
    constraint: str  # the foreign key's name, or "references <column>" for a rules link
    policy: Literal["fail", "nullify"] = "fail"
    outside_rows: int = 0  # rows of the organization that reference outside it (pre-flight)
    nullified_keys: list[str] = Field(default_factory=list)  # every such row's key (nullify)


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str  # schema-qualified display name, e.g. "public.projects"
    schema_name: str
    name: str
    columns: list[str]  # copy columns in explicit order (generated columns excluded)
    column_types: list[str]  # format_type() of each copy column, same order
    generated_columns: list[str] = Field(default_factory=list)
    key: list[str] = Field(default_factory=list)  # chunking key; empty: the org's rows form one chunk
    key_types: list[str] = Field(default_factory=list)
    filter: list[FilterPath]  # a row belongs to the org when ANY path reaches the root
    filter_sql: str = ""  # rendered for review only; executed SQL is rebuilt from `filter`
    depends_on: list[str] = Field(default_factory=list)
    estimated_rows: int = 0
    estimated_bytes: int = 0
    partitions: list[str] = Field(default_factory=list)  # leaves covered through this parent
    self_referencing: bool = False  # an FK from this table to itself (copied in one chunk)
    reason: str = ""
    triggers: list[Trigger] = Field(default_factory=list)  # the target's user triggers
    nullify: list[NullifiedReference] = Field(default_factory=list)  # outside_references: nullify


class ClusterWideRef(BaseModel):
    """Rows of a cluster-wide table that the org's rows reference; they must exist on the target."""

    model_config = ConfigDict(extra="forbid")

    table: str
    columns: list[str]
    ref_table: str
    ref_columns: list[str]


class SkippedTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    classification: Literal["cluster_wide", "ignored", "cell_local", "partition", "not_reached"]
    reason: str


class RootSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str = "public.organizations"
    key: str = "id"
    key_type: str = "bigint"


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    org: OrgKey
    from_cell: str = Field(alias="from")
    to_cell: str = Field(alias="to")
    steps: list[Step]
    format_version: int = PLAN_FORMAT_VERSION
    root: RootSpec = Field(default_factory=RootSpec)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    source_fingerprint: str = ""
    target_fingerprint: str = ""
    cluster_wide_refs: list[ClusterWideRef] = Field(default_factory=list)
    org_references: list[OrgReference] = Field(default_factory=list)
    skipped: list[SkippedTable] = Field(default_factory=list)
    rules: str | None = None
    warnings: list[str] = Field(default_factory=list)  # things the reviewer must look at
    # Target sessions that write the org's rows run with session_replication_role = replica:
    # ordinary triggers and the per-row FK triggers do not fire (see orgmove/triggers.py).
    replica_role: bool = True
    allowed_triggers: list[str] = Field(default_factory=list)  # --allow-triggers
    checksum: str = ""

    @property
    def move_key(self) -> str:
        """Identifies the move in the state store and the Topology Service."""
        return f"org-{self.org}-{self.from_cell}-{self.to_cell}"

    def step(self, table: str) -> Step:
        for s in self.steps:
            if s.table == table:
                return s
        raise PlanError(f"table {table} is not in the plan", fix="check the table name with `orgmove plan`")

    def content_checksum(self) -> str:
        body = self.model_dump(mode="json", by_alias=True, exclude={"checksum"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        doc = self.model_dump(mode="json", by_alias=True)
        doc["checksum"] = self.content_checksum()
        # Top-level keys in a reviewer-friendly order; nested objects keep model order.
        first = ["org", "from", "to", "root", "created_at", "format_version"]
        ordered = {k: doc[k] for k in first}
        ordered.update({k: v for k, v in doc.items() if k not in ordered})
        return json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"


def default_plan_path(plans_dir: str | Path, org: OrgKey, from_cell: str, to_cell: str) -> Path:
    return Path(plans_dir) / f"org-{org}-{from_cell}-{to_cell}.plan.json"


def write_plan(plan: Plan, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan.checksum = plan.content_checksum()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(plan.to_json(), encoding="utf-8")
    tmp.replace(path)
    return path


def read_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.exists():
        raise PlanError(
            f"plan file {path} does not exist",
            fix="make one with `orgmove plan --org ID --from CELL --to CELL`",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read plan file {path}: {exc}",
                        fix="pass the plan file written by `orgmove plan`") from None
    try:
        raw: Any = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PlanError(
            f"plan file {path} is not valid JSON ({exc})",
            fix="regenerate it with `orgmove plan`; plans are not meant to be edited by hand",
        ) from None
    if not isinstance(raw, dict):
        raise PlanError(f"plan file {path} is not a JSON object", fix="regenerate it with `orgmove plan`")
    try:
        plan = Plan.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise PlanError(
            f"plan file {path} is not a valid plan ({loc}: {first['msg']})",
            fix="regenerate it with `orgmove plan`",
        ) from None
    if plan.format_version != PLAN_FORMAT_VERSION:
        raise PlanError(
            f"plan file {path} has format version {plan.format_version}; this orgmove reads "
            f"version {PLAN_FORMAT_VERSION}",
            fix="regenerate it with this version of `orgmove plan`",
        )
    try:
        checksum = plan.content_checksum()
    except UnicodeEncodeError:  # a lone surrogate, written as a \udXXX escape
        raise PlanError(f"plan file {path} holds text that is not valid Unicode",
                        fix="regenerate it with `orgmove plan`") from None
    if plan.checksum != checksum:
        raise StalePlan(
            f"plan file {path} was changed after it was written (its checksum does not match)",
            fix="regenerate it with `orgmove plan`; to change what moves, edit the rules file instead",
        )
    return plan


# --- SQL rendering -----------------------------------------------------------------------------


def split_table(qualified: str) -> tuple[str, str]:
    if "." in qualified:
        schema, _, name = qualified.partition(".")
        return schema, name
    return "public", qualified


def table_ident(qualified: str) -> sql.Identifier:
    schema, name = split_table(qualified)
    return sql.Identifier(schema, name)


def _cols(columns: list[str]) -> sql.Composable:
    idents = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    if len(columns) == 1:
        return idents
    return sql.SQL("({})").format(idents)


def _path_condition(hops: list[Hop], root: RootSpec, org: sql.Composable) -> sql.Composable:
    if not hops:
        return sql.SQL("{} = {}").format(sql.Identifier(root.key), org)
    hop, rest = hops[0], hops[1:]
    if not rest and hop.ref_table == root.table and hop.ref_columns == [root.key]:
        cond: sql.Composable = sql.SQL("{} = {}").format(sql.Identifier(hop.columns[0]), org)
    else:
        cond = sql.SQL("{} IN (SELECT {} FROM {} WHERE {})").format(
            _cols(hop.columns),
            sql.SQL(", ").join(sql.Identifier(c) for c in hop.ref_columns),
            table_ident(hop.ref_table),
            _path_condition(rest, root, org),
        )
    if hop.type_column is not None:
        cond = sql.SQL("({} = {} AND {})").format(
            sql.Identifier(hop.type_column), sql.Literal(hop.type_value), cond
        )
    return cond


def filter_condition(step: Step, root: RootSpec, org: OrgKey | sql.Composable) -> sql.Composable:
    """The step's row filter as a WHERE condition. ``org`` is a value (quoted as a literal of the
    root key's type) or a ready composable such as a placeholder."""
    org_sql: sql.Composable
    if isinstance(org, sql.Composable):
        org_sql = org
    else:
        org_sql = sql.SQL("{}::{}").format(sql.Literal(org), sql.SQL(_safe_type(root.key_type)))
    paths = [_path_condition(p.hops, root, org_sql) for p in step.filter]
    if not paths:
        raise PlanError(f"step {step.table} has no filter", fix="regenerate the plan")
    if len(paths) == 1:
        return paths[0]
    return sql.SQL("({})").format(sql.SQL(" OR ").join(paths))


def column_exprs(step: Step, root: RootSpec, org: OrgKey | sql.Composable) -> list[sql.Composable]:
    """The step's copy columns as read from a Cell: plain columns, except those of a
    :class:`NullifiedReference`, which read NULL unless the referenced row is the organization's.
    Used by the copy, the verify checksums and the sync, so both Cells compare alike."""
    exprs: list[sql.Composable] = [sql.Identifier(c) for c in step.columns]
    for ref in step.nullify:
        alias = sql.Identifier("orgmove_n")
        match = sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(
                alias, sql.Identifier(rc), table_ident(step.table), sql.Identifier(c))
            for c, rc in zip(ref.columns, ref.ref_columns, strict=True))
        ref_step = Step(table=ref.ref_table, schema_name="", name="", columns=[], column_types=[],
                        filter=ref.ref_filter)
        # The filter's columns are unqualified: they resolve to the innermost table (orgmove_n).
        kept = sql.SQL("EXISTS (SELECT 1 FROM {} AS {} WHERE {} AND {})").format(
            table_ident(ref.ref_table), alias, match, filter_condition(ref_step, root, org))
        for c in ref.columns:
            i = step.columns.index(c)
            exprs[i] = sql.SQL("CASE WHEN {} THEN {} END").format(kept, sql.Identifier(c))
    return exprs


_TYPE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_ ()[],\"")
# The shape of format_type() output: words or quoted names, one optional (n[,m]) modifier,
# optional [] suffixes. Parentheses elsewhere (``bigint) OR (true``) would change the SQL around.
_TYPE_WORD = r'(?:[a-z_][a-z0-9_]*|"(?:[^"]|"")+")'
_TYPE_SHAPE = re.compile(
    rf"^{_TYPE_WORD}(?: {_TYPE_WORD})*(?:\(\d+(?:, ?\d+)*\))?(?: {_TYPE_WORD})*(?:\[\])*$", re.I
)


def _safe_type(type_name: str) -> str:
    # Types come from format_type() in the catalog; refuse anything else rather than quote it.
    if (not type_name or not set(type_name.lower()) <= _TYPE_CHARS
            or not _TYPE_SHAPE.match(type_name)):
        raise PlanError(f"unexpected type name {type_name!r} in plan", fix="regenerate the plan")
    return type_name


def cast_type(type_name: str) -> sql.Composable:
    return sql.SQL(_safe_type(type_name))


def render_filter_for_review(step: Step, root: RootSpec) -> str:
    """Human-readable filter with a ``:org`` placeholder (no connection needed)."""
    return _render_plain(filter_condition(step, root, sql.SQL(":org")))


def _render_plain(obj: sql.Composable) -> str:
    # psycopg needs a connection to quote; for review text a plain rendering is enough.
    if isinstance(obj, sql.Composed):
        return "".join(_render_plain(part) for part in obj)
    if isinstance(obj, sql.SQL):
        return obj.as_string(None)
    if isinstance(obj, sql.Identifier):
        return ".".join(_quote_ident(s) for s in obj._obj)
    if isinstance(obj, sql.Literal):
        value = obj._obj
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return str(value)
    return str(obj)


def _quote_ident(name: str) -> str:
    simple = name.isidentifier() and name == name.lower() and name.isascii()
    return name if simple else '"' + name.replace('"', '""') + '"'
