"""Sharding rules: what the database's foreign keys do not say about who owns a row.

A rules file (``plans/*.rules.yaml``, ``--rules FILE``)::

    root: {table: organizations, key: id}     # the default
    tables:
      notes:
        # the row's owner; several entries are alternatives (a row belongs to the org when ANY
        # of them leads to it). Value: a table (its primary key) or ``table(column)``.
        sharding_key: {project_id: projects}
        # type/id pairs without a foreign key. Ownership when the table has no sharding_key,
        # otherwise they only order the copy (notes after issues and merge requests).
        polymorphic:
          - {type_column: noteable_type, id_column: noteable_id,
             types: {Issue: issues, MergeRequest: merge_requests}}
      ci_pipelines:
        sharding_key: {project_id: projects}
        # links without a foreign key that are not ownership: to a cluster-wide table (the
        # referenced rows must exist on the target) or to an org table (copy order only).
        references: {user_id: users}
      merge_requests:
        sharding_key: {target_project_id: projects}
        # a reference that may lead to another organization's row (a fork): `fail` the
        # pre-flight (the default) or `nullify` it on the target (nullable columns only).
        outside_references: {source_project_id: nullify}
      some_table:
        ignore_fks: [fk_name_or_column]       # foreign keys the planner must not follow
    cluster_wide: [users, lfs_objects]         # present in every Cell; never copied
    ignored: [schema_migrations]               # never copied, never checked
    cell_local: [application_settings]         # per-Cell data; never copied

Table names are ``name`` (schema ``public``, or the only table of that name) or ``schema.name``.
A table with a declared sharding key is owned through it; its foreign keys to other org tables
then only order the copy.

Every option and a walkthrough from an unknown schema to a reviewed plan: docs/rules.md.

``--rules DIR`` reads a directory of GitLab table-dictionary files (``db/docs/*.yml``) instead,
see :func:`load_dictionary`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orgmove.errors import RulesError


class Polymorphic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type_column: str
    id_column: str
    types: dict[str, str]  # type value -> table or table(column)

    @field_validator("types")
    @classmethod
    def _not_empty(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("a polymorphic link needs at least one type")
        return v


class TableRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sharding_key: dict[str, str] = Field(default_factory=dict)
    polymorphic: list[Polymorphic] = Field(default_factory=list)
    references: dict[str, str] = Field(default_factory=dict)
    ignore_fks: list[str] = Field(default_factory=list)
    # What to do with a row whose reference (a foreign key name or column, or a `references`
    # column) leads outside the organization: `fail` the pre-flight (the default) or `nullify`
    # the column on the target (nullable columns only).
    outside_references: dict[str, Literal["fail", "nullify"]] = Field(default_factory=dict)
    note: str = ""

    def is_empty(self) -> bool:
        return not (self.sharding_key or self.polymorphic or self.references or self.ignore_fks
                    or self.outside_references)

    def outside_policy(self, constraint: str, columns: list[str]) -> Literal["fail", "nullify"]:
        for name in (constraint, ",".join(columns), *columns):
            if name in self.outside_references:
                return self.outside_references[name]
        return "fail"


class RootRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str = "organizations"
    key: str = "id"


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: RootRule = Field(default_factory=RootRule)
    tables: dict[str, TableRule] = Field(default_factory=dict)
    cluster_wide: list[str] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)
    cell_local: list[str] = Field(default_factory=list)
    source: str = Field(default="", exclude=True)  # where the rules came from (for messages)

    def check_lists(self) -> None:
        seen: dict[str, str] = {}
        for kind in ("cluster_wide", "ignored", "cell_local"):
            for name in getattr(self, kind):
                if name in seen and seen[name] != kind:
                    raise RulesError(
                        f"{self.source or 'rules'}: table {name} is listed both as {seen[name]} "
                        f"and as {kind}",
                        fix="keep it in one list",
                    )
                seen[name] = kind
        for name, rule in self.tables.items():
            if name in seen and (rule.sharding_key or rule.polymorphic):
                raise RulesError(
                    f"{self.source or 'rules'}: table {name} has a sharding rule but is listed as "
                    f"{seen[name]}",
                    fix="remove one of the two",
                )


_REF = re.compile(r"^\s*([A-Za-z_][\w$.]*)\s*(?:\(\s*([A-Za-z_][\w$]*)\s*\))?\s*$")


def parse_ref(text: str) -> tuple[str, str | None]:
    """``projects`` -> (projects, None); ``projects(id)`` -> (projects, id)."""
    m = _REF.match(text)
    if not m:
        raise RulesError(
            f"cannot read the table reference {text!r}",
            fix="write `table` or `table(column)`, e.g. `projects` or `public.projects(id)`",
        )
    return m.group(1), m.group(2)


# --- loading ----------------------------------------------------------------------------------


def load_rules(path: str | Path | None) -> Rules:
    """Rules from a YAML file, from a directory of GitLab ``db/docs`` files, or the defaults."""
    if path is None:
        return Rules(source="default rules")
    p = Path(path)
    if p.is_dir():
        return load_dictionary(p)
    if not p.exists():
        raise RulesError(
            f"rules file {p} does not exist",
            fix="pass an existing file or directory to --rules (e.g. plans/gitlab.rules.yaml)",
        )
    text = _read_text(p)
    return parse_rules(text, source=str(p))


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"cannot read rules file {p}: {exc}", fix="check the path") from None


def _yaml_load(text: str, source: str) -> Any:
    try:
        # The C loader when available: a GitLab db/docs directory has thousands of files.
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RulesError(
            f"{source} is not valid YAML{where}: {problem}",
            fix="correct the syntax there",
        ) from None


def parse_rules(text: str, *, source: str = "rules") -> Rules:
    raw = _yaml_load(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RulesError(f"{source} must be a YAML mapping", fix="see plans/gitlab.rules.yaml")
    raw.setdefault("tables", {})
    if raw["tables"] is None:
        raw["tables"] = {}
    if isinstance(raw["tables"], dict):
        raw["tables"] = {k: ({} if v is None else v) for k, v in raw["tables"].items()}
    for key in ("cluster_wide", "ignored", "cell_local"):
        if raw.get(key) is None:
            raw.pop(key, None)
    try:
        rules = Rules.model_validate(raw)
    except ValidationError as exc:
        parts = []
        for item in exc.errors()[:5]:
            loc = ".".join(str(x) for x in item["loc"])
            parts.append(f"{loc}: {item['msg']}")
        raise RulesError(
            f"{source} is not a valid rules file ({'; '.join(parts)})",
            fix="see the format at the top of orgmove/rules.py or plans/gitlab.rules.yaml",
        ) from None
    rules.source = source
    for name, rule in rules.tables.items():
        refs = [*rule.sharding_key.values(), *rule.references.values()]
        refs += [ref for poly in rule.polymorphic for ref in poly.types.values()]
        for ref in refs:
            try:
                parse_ref(ref)
            except RulesError as exc:
                raise RulesError(f"{source}: table {name}: {exc.message}", fix=exc.fix) from None
    rules.check_lists()
    return rules


def dump_rules(rules: Rules, *, header: str = "", comments: dict[str, str] | None = None) -> str:
    """The rules as YAML that :func:`parse_rules` reads back unchanged. ``comments``: table name
    -> a comment written on the line above its entry (under ``tables`` or in a list)."""
    doc: dict[str, Any] = {"root": rules.root.model_dump()}
    tables: dict[str, Any] = {}
    for name in sorted(rules.tables):
        rule = rules.tables[name]
        body = rule.model_dump(exclude_defaults=True)
        tables[name] = body
    doc["tables"] = tables
    for key in ("cluster_wide", "ignored", "cell_local"):
        values = getattr(rules, key)
        if values:
            doc[key] = list(dict.fromkeys(values))
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    if comments:
        text = _with_comments(text, comments)
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
    return text


_ENTRY = re.compile(r"^(?P<indent>  |- |  - )(?P<name>[^\s:#][^:#]*?)(?::\s*(?:\{\})?)?$")


def _with_comments(text: str, comments: dict[str, str]) -> str:
    """``# comment`` lines above the entries of ``tables`` (``  name:``) and of the lists
    (``- name``) that ``comments`` names. Top-level keys and nested fields are left alone."""
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        if line and not line.startswith((" ", "-")):
            section = line.split(":", 1)[0]
        m = _ENTRY.match(line)
        if m and section != "root":
            is_table = section == "tables" and m.group("indent") == "  "
            is_item = section != "tables" and m.group("indent") in ("- ", "  - ")
            raw = m.group("name").strip()
            loaded = yaml.safe_load(raw) if raw else raw
            name = loaded if isinstance(loaded, str) else raw
            if (is_table or is_item) and name in comments:
                pad = "  " if is_table else ""
                for part in comments[name].splitlines() or [""]:
                    out.append(f"{pad}# {part}")
        out.append(line)
    return "\n".join(out) + "\n"


# --- GitLab's table dictionary (db/docs/*.yml) -------------------------------------------------

ORG_SCHEMAS = {"gitlab_main_org", "gitlab_main_cell", "gitlab_ci", "gitlab_sec"}
CELL_LOCAL_SCHEMAS = {
    "gitlab_main_cell_local",
    "gitlab_ci_cell_local",
    "gitlab_main_cell_setting",
    "gitlab_shared_cell_local",
    "gitlab_internal",
    "gitlab_shared",
}
CLUSTER_WIDE_SCHEMAS = {"gitlab_main_clusterwide", "gitlab_main_user"}


def load_dictionary(directory: Path) -> Rules:
    """Rules from GitLab table-dictionary files, one per table (``table_name``, ``gitlab_schema``,
    ``sharding_key``, ``desired_sharding_key`` with ``backfill_via``, ``exempt_from_sharding``).
    Unknown fields are ignored. A ``db/docs`` sub-directory is used when present."""
    if (directory / "db" / "docs").is_dir():
        directory = directory / "db" / "docs"
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    if not files:
        raise RulesError(
            f"rules directory {directory} holds no *.yml table dictionary files",
            fix="point --rules at GitLab's db/docs directory or at a rules YAML file",
        )
    rules = Rules(source=str(directory))
    roots: list[tuple[str, str]] = []
    for f in files:
        raw = _yaml_load(_read_text(f), str(f))
        if not isinstance(raw, dict):
            raise RulesError(f"{f} is not a YAML mapping", fix="fix or remove the file")
        name = raw.get("table_name")
        if not name:
            continue  # views (view_name) and other documents
        if not isinstance(name, str):
            raise RulesError(f"{f}: table_name must be a string", fix="fix the file")
        _dictionary_entry(rules, name, raw, f, roots)
    if len(roots) > 1:
        listed = ", ".join(f"{t}.{k}" for t, k in roots)
        raise RulesError(
            f"{directory}: several tables declare themselves as the sharding root ({listed})",
            fix="keep the sharding_key `id: <own table>` only on organizations",
        )
    if roots:
        rules.root = RootRule(table=roots[0][0], key=roots[0][1])
    rules.check_lists()
    return rules


def _dictionary_entry(
    rules: Rules, name: str, raw: dict[str, Any], f: Path, roots: list[tuple[str, str]]
) -> None:
    schema = str(raw.get("gitlab_schema") or "")
    sharding_key = raw.get("sharding_key")
    if isinstance(sharding_key, dict) and name in sharding_key.values():
        # The sharding root declares itself (`organizations: sharding_key: {id: organizations}`),
        # whatever its gitlab_schema says.
        roots.append((name, str(next(c for c, t in sharding_key.items() if t == name))))
        return
    if raw.get("exempt_from_sharding") is True or schema in CELL_LOCAL_SCHEMAS:
        rules.cell_local.append(name)
        return
    if schema in CLUSTER_WIDE_SCHEMAS:
        rules.cluster_wide.append(name)
        return
    rule = TableRule(note=f"db/docs {f.name} ({schema or 'no gitlab_schema'})")
    if sharding_key is not None:
        if not isinstance(sharding_key, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sharding_key.items()
        ):
            raise RulesError(
                f"{f}: sharding_key must map columns to tables", fix="e.g. `project_id: projects`"
            )
        rule.sharding_key.update(sharding_key)
    desired = raw.get("desired_sharding_key")
    if not rule.sharding_key and isinstance(desired, dict):
        for column, spec in desired.items():
            parent = _backfill_parent(spec)
            if parent is None:
                raise RulesError(
                    f"{f}: desired_sharding_key {column} has no backfill_via.parent "
                    "(foreign_key, table)",
                    fix="add backfill_via.parent, or a sharding_key",
                )
            fk, table, pk = parent
            rule.sharding_key[fk] = f"{table}({pk})"
    # Without a key the owner comes from foreign keys, or the table is reported unclassified.
    if rule.sharding_key:
        rules.tables[name] = rule


def _backfill_parent(spec: Any) -> tuple[str, str, str] | None:
    if not isinstance(spec, dict):
        return None
    via = spec.get("backfill_via")
    if not isinstance(via, dict):
        return None
    parent = via.get("parent")
    if not isinstance(parent, dict):
        return None
    fk, table = parent.get("foreign_key"), parent.get("table")
    pk = parent.get("table_primary_key") or "id"
    if not isinstance(fk, str) or not isinstance(table, str) or not isinstance(pk, str):
        return None
    return fk, table, pk
