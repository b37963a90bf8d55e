"""How each column type enters verify's row hash (orgmove.verify.column_hash_operand): pure."""

from __future__ import annotations

import pytest

from orgmove.plan import RootSpec, Step
from orgmove.verify import base_type, column_hash_operand, row_hash_expr


@pytest.mark.parametrize(("column_type", "operand"), [
    ("bigint", '"c"'),
    ("timestamp with time zone", '"c"'),
    ("jsonb", '"c"'),
    ("text", '("c" COLLATE "C")'),
    ("character varying(255)", '("c" COLLATE "C")'),
    ("numeric(10,2)", '"numeric_send"("c")'),
    ("double precision", '"float8send"("c")'),
    ("interval", '"interval_send"("c")'),
    ("bigint[]", '"c"::text'),  # an array's hash ignores its bounds: its text does not
    ("my_enum", '"c"::text'),  # an enum's hash is of its OID, which differs between Cells
    ("character(3)", '"c"::text'),
    ("timestamp(3) with time zone", '"c"'),
])
def test_each_type_enters_the_hash_exactly(column_type: str, operand: str) -> None:
    assert column_hash_operand("c", column_type).as_string(None) == operand


def test_base_type_drops_only_the_modifier() -> None:
    assert base_type("timestamp(3) without time zone") == "timestamp without time zone"
    assert base_type("character varying(20)[]") == "character varying[]"
    assert base_type("bigint") == "bigint"


def test_the_row_hash_lists_the_columns_in_plan_order() -> None:
    step = Step(table="public.t", schema_name="public", name="t", columns=["id", "w", "doc"],
                column_types=["bigint", "double precision", "json"], filter=[])
    assert row_hash_expr(step, RootSpec(), 1).as_string(None) == (
        'hash_record_extended(ROW("id", "float8send"("w"), "doc"::text), 0)')
