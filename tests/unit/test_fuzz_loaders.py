"""Issue 8: fuzz the plan and rules loaders. Whatever the input (arbitrary text, JSON, YAML), it is
either loaded or refused with an :class:`~orgmove.errors.OrgmoveError` carrying a message and a
fix, never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from orgmove.errors import OrgmoveError
from orgmove.plan import Plan, read_plan, write_plan
from orgmove.rules import Rules, load_rules, parse_rules

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=25,
)

RULE_KEYS = ["root", "tables", "cluster_wide", "ignored", "cell_local", "table", "key",
             "sharding_key", "polymorphic", "references", "ignore_fks", "note", "type_column",
             "id_column", "types", "projects", "notes", "projects(id)", "source"]
rule_like = st.recursive(
    st.one_of(scalars, st.sampled_from(RULE_KEYS)),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(RULE_KEYS), st.text(max_size=8)), children,
                        max_size=4),
    ),
    max_leaves=30,
)


def _valid_plan_doc() -> dict[str, Any]:
    doc = {
        "org": 1, "from": "cell-1", "to": "cell-2",
        "steps": [{
            "table": "public.organizations", "schema_name": "public", "name": "organizations",
            "columns": ["id", "name"], "column_types": ["bigint", "text"], "key": ["id"],
            "key_types": ["bigint"], "filter": [{"hops": [], "source": "root"}],
        }],
    }
    plan = Plan.model_validate(doc)
    return json.loads(plan.to_json())  # type: ignore[no-any-return]


VALID_PLAN = _valid_plan_doc()
PLAN_KEYS = sorted(VALID_PLAN) + sorted(VALID_PLAN["steps"][0])


@st.composite
def mutated_plans(draw: st.DrawFn) -> Any:
    """A valid plan with a few fields replaced, removed or added (checksum sometimes fixed up)."""
    doc = json.loads(json.dumps(VALID_PLAN))
    for _ in range(draw(st.integers(1, 3))):
        steps = doc.get("steps")
        step = steps[0] if isinstance(steps, list) and steps and isinstance(steps[0], dict) else None
        where = doc if step is None or draw(st.booleans()) else step
        key = draw(st.sampled_from(PLAN_KEYS))
        if draw(st.booleans()):
            where[key] = draw(json_values)
        else:
            where.pop(key, None)
    if draw(st.booleans()):
        # Recompute the checksum, as someone forging an edit would: the content must still load
        # or be refused cleanly.
        body = {k: v for k, v in doc.items() if k != "checksum"}
        try:
            doc["checksum"] = Plan.model_validate(body).content_checksum()
        except Exception:
            pass
    return doc


# --- helpers ------------------------------------------------------------------------------------


def _plan_from_text(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.plan.json"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _loads_or_refuses(lambda: read_plan(path))


def _loads_or_refuses(load: Any) -> Any:
    try:
        return load()
    except OrgmoveError as exc:
        assert exc.exit_code == 2, exc
        assert exc.message and exc.fix, exc
        assert str(exc)
        return None


# --- the plan loader ----------------------------------------------------------------------------


def test_a_valid_plan_round_trips(tmp_path: Path) -> None:
    plan = Plan.model_validate(VALID_PLAN)
    path = write_plan(plan, tmp_path / "p.plan.json")
    assert read_plan(path).content_checksum() == plan.content_checksum()


@FUZZ
@given(st.text(max_size=300))
@example("")
@example("null")
@example("[]")
@example('"\\ud800"')
@example('{"org": "\\udfff"}')
@example("[" * 5000 + "]" * 5000)
@example("1e999999")
@example('{"org": 1, "org": 2}')
def test_read_plan_on_arbitrary_text(text: str) -> None:
    _plan_from_text(text)


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xff\xfe{}")
@example(b'{"org": "\xc3"}')
def test_read_plan_on_arbitrary_bytes(data: bytes) -> None:
    _plan_from_text(data)


@FUZZ
@given(json_values)
def test_read_plan_on_arbitrary_json(value: Any) -> None:
    _plan_from_text(json.dumps(value))


@FUZZ
@given(mutated_plans())
def test_read_plan_on_edited_plans(doc: Any) -> None:
    _plan_from_text(json.dumps(doc))


def test_read_plan_on_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    _loads_or_refuses(lambda: read_plan(tmp_path))
    _loads_or_refuses(lambda: read_plan(tmp_path / "missing.plan.json"))


def test_read_plan_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    doc = dict(VALID_PLAN, org="\ud800")
    path = tmp_path / "s.plan.json"
    path.write_text(json.dumps(doc))  # ensure_ascii: written as the escape \ud800
    with pytest.raises(OrgmoveError):
        read_plan(path)


def test_read_plan_on_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "deep.plan.json"
    path.write_text('{"org": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _loads_or_refuses(lambda: read_plan(path))


# --- the rules loader ---------------------------------------------------------------------------


def _rules(text: str) -> Rules | None:
    result: Rules | None = _loads_or_refuses(lambda: parse_rules(text, source="fuzz.rules.yaml"))
    return result


@FUZZ
@given(st.text(max_size=300))
@example("")
@example("~")
@example("- a\n- b\n")
@example("tables: [1, 2]")
@example("tables: {notes: {sharding_key: {project_id: 'projects(('}}}")
@example("a: &a [*a]")
@example("? [a, b]\n: c\n")
@example("!!python/object/apply:os.system ['true']")
@example("tables: {notes: {polymorphic: [{type_column: t, id_column: i, types: {}}]}}")
@example("cluster_wide: [users]\nignored: [users]\n")
@example("root: {table: [x]}")
@example("\t")
@example("%YAML 9.9\n---\n{}")
@example("[" * 5000)
@example("[" * 5000 + "]" * 5000)
@example("tables: {a: " + "{b: " * 2000 + "1" + "}" * 2001)
@example("a: &a [*a]\ntables: {notes: {ignore_fks: *a}}")
@example("- " * 3000 + "x")
def test_parse_rules_on_arbitrary_text(text: str) -> None:
    _rules(text)


@FUZZ
@given(rule_like)
def test_parse_rules_on_arbitrary_yaml(value: Any) -> None:
    text = yaml.safe_dump(value, allow_unicode=True)
    _rules(text)


@FUZZ
@given(rule_like)
def test_parse_rules_on_arbitrary_json(value: Any) -> None:
    _rules(json.dumps(value))  # JSON is YAML


@FUZZ
@given(st.dictionaries(st.sampled_from(["projects", "notes", "issues", "x.y", "1"]),
                       st.dictionaries(st.sampled_from(["sharding_key", "references", "polymorphic",
                                                        "ignore_fks", "note", "bogus"]),
                                       rule_like, max_size=3),
                       max_size=3))
def test_parse_rules_on_rule_shaped_tables(tables: Any) -> None:
    _rules(yaml.safe_dump({"tables": tables}, allow_unicode=True))


def test_the_project_rules_files_load() -> None:
    for path in sorted((REPO / "plans").glob("*.rules.yaml")):
        assert isinstance(load_rules(path), Rules), path


@FUZZ
@given(st.binary(max_size=200))
def test_load_rules_on_arbitrary_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.rules.yaml"
        path.write_bytes(data)
        _loads_or_refuses(lambda: load_rules(path))


def test_load_rules_on_a_dictionary_directory_of_junk(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("- not a mapping\n")
    _loads_or_refuses(lambda: load_rules(tmp_path))
    (tmp_path / "a.yml").write_text("table_name: [x]\n")
    _loads_or_refuses(lambda: load_rules(tmp_path))
    (tmp_path / "a.yml").write_bytes(b"\xff\xfe")
    _loads_or_refuses(lambda: load_rules(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    _loads_or_refuses(lambda: load_rules(empty))


@FUZZ
@given(st.dictionaries(st.sampled_from(["table_name", "gitlab_schema", "sharding_key",
                                        "desired_sharding_key", "exempt_from_sharding", "view_name"]),
                       rule_like, max_size=5))
def test_load_dictionary_on_arbitrary_entries(entry: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "t.yml").write_text(yaml.safe_dump(entry, allow_unicode=True))
        _loads_or_refuses(lambda: load_rules(tmp))
