"""Spec syntax: quoted values hold any text, and formatting a spec then parsing it gives it back."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unmask.core.spec import SpecError, format_spec, parse_spec, split_combined

keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
values = st.one_of(st.text(max_size=40), st.integers(), st.booleans(), st.none(),
                   st.floats(allow_nan=False, allow_infinity=False))


@given(params=st.dictionaries(keys, values, max_size=4))
def test_format_then_parse_gives_the_parameters_back(params):
    name, parsed = parse_spec(format_spec("regex", params))
    assert name == "regex" and parsed.keys() == params.keys()
    for key, value in params.items():
        assert parsed[key] == value or (isinstance(value, float) and math.isclose(parsed[key], value))
        assert type(parsed[key]) is type(value) or isinstance(value, float)


@given(left=st.text(max_size=30), right=st.text(max_size=30))
def test_quoted_plus_signs_do_not_split_a_combination(left, right):
    combined = format_spec("regex", {"pattern": left}) + " + " + format_spec("regex", {"pattern": right})
    parts = split_combined(combined)
    assert [parse_spec(part)[1]["pattern"] for part in parts] == [left, right]


def test_quoted_values_keep_separators_and_spaces():
    assert parse_spec("regex:pattern='[a-z]{1,3}', flags=x") == ("regex", {"pattern": "[a-z]{1,3}", "flags": "x"})
    assert parse_spec('json_schema:schema="my dir, v2/s.json"') == ("json_schema", {"schema": "my dir, v2/s.json"})
    assert parse_spec(r"x:a='it\'s',b='1'") == ("x", {"a": "it's", "b": "1"})  # quoted: always a string


@pytest.mark.parametrize("spec, message", [
    ("regex:pattern='[a-z]", "a quote ' is not closed"),
    ("regex:pattern='a'b", "must end with its quote"),
    ("regex:'pattern'=a", "must look like key=value"),
])
def test_bad_quoting_is_one_clear_error(spec, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec)
