"""The configuration's validation layer (poolwatch/schema.py) on models of its own: strict types,
bounds, containers, unknown and odd keys, validators, and what a validated model is (frozen, equal
by value, its repr and dump). The configuration's own messages are tested in test_config*.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pytest

from poolwatch.schema import (
    Field,
    FrozenError,
    Issue,
    Model,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)


class Inner(Model):
    a: Annotated[int, Field(ge=1, le=10)] = 1

    @model_validator(mode="after")
    def _not_seven(self) -> Inner:
        if self.a == 7:
            raise ValueError("seven")
        return self


class Outer(Model):
    n: int
    f: Annotated[float, Field(ge=0.1, le=100)] = 1.0
    g: Annotated[float, Field(ge=0)] = 0.0
    b: bool = False
    s: Annotated[str, Field(min_length=1, max_length=3)] | None = None
    p: Annotated[str, Field(pattern=r"^[a-z]+$")] = "x"
    lit: Literal["x", "y", "z"] = "x"
    names: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(strict=False)] = ()
    inner: Inner = Inner()
    inners: Annotated[tuple[Inner, ...], Field(strict=False)] = ()
    secret: SecretStr | None = None
    secrets: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("s")
    @classmethod
    def _no_q(cls, value: str | None) -> str | None:
        if value == "q":
            raise ValueError("Not q")
        return value


def issues(data: Any) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as raised:
        Outer.model_validate(data)
    return [(issue.loc, issue.kind, issue.message) for issue in raised.value.issues]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, "expected a valid integer"),
        (5.0, "expected a valid integer"),
        ("5", "expected a valid integer"),
        (None, "expected a valid integer"),
    ],
)
def test_an_int_is_an_int(value: Any, message: str) -> None:
    assert issues({"n": value}) == [(("n",), "type", message)]


def test_a_float_takes_an_int_and_keeps_a_float() -> None:
    model = Outer.model_validate({"n": 1, "f": 5})
    assert model.f == 5.0
    assert isinstance(model.f, float)
    assert issues({"n": 1, "f": 10**400}) == [(("f",), "type", "expected a valid number")]
    assert issues({"n": 1, "f": True}) == [(("f",), "type", "expected a valid number")]


def test_bounds_first_failing_in_order_le_lt_ge_gt() -> None:
    nan = float("nan")
    assert issues({"n": 1, "f": nan}) == [(("f",), "type", "expected less than or equal to 100")]
    assert issues({"n": 1, "g": nan}) == [(("g",), "type", "expected greater than or equal to 0")]
    assert issues({"n": 1, "f": 0}) == [(("f",), "type", "expected greater than or equal to 0.1")]
    assert Outer.model_validate({"n": 1, "g": float("inf")}).g == float("inf")


def test_strings_lengths_patterns_and_literals() -> None:
    assert issues({"n": 1, "s": ""}) == [(("s",), "type", "string should have at least 1 character")]
    assert issues({"n": 1, "s": "abcd"}) == [(("s",), "type", "string should have at most 3 characters")]
    assert issues({"n": 1, "p": "abc\n"}) == [(("p",), "pattern", r"^[a-z]+$")]
    assert issues({"n": 1, "lit": "w"}) == [(("lit",), "type", "expected 'x', 'y' or 'z'")]
    unicode = "expected a valid string, unable to parse raw data as a unicode string"
    assert issues({"n": 1, "p": "\ud800"}) == [(("p",), "type", unicode)]
    assert Outer.model_validate({"n": 1, "s": None}).s is None


def test_a_lax_tuple_takes_a_list_or_a_set_and_checks_each_item() -> None:
    assert Outer.model_validate({"n": 1, "names": ["a", "b"]}).names == ("a", "b")
    assert Outer.model_validate({"n": 1, "names": {"a"}}).names == ("a",)
    assert issues({"n": 1, "names": "ab"}) == [(("names",), "type", "expected a valid tuple")]
    assert issues({"n": 1, "names": ["a", 1, ""]}) == [
        (("names", 1), "type", "expected a valid string"),
        (("names", 2), "type", "string should have at least 1 character"),
    ]


def test_every_issue_in_field_order_then_key_order() -> None:
    data = {"zz": 1, "f": "x", 5: 1, "inner": {"a": 0, "b": 1}, "inners": [{"a": 7}, 3]}
    assert issues(data) == [
        (("n",), "missing", "required key is missing"),
        (("f",), "type", "expected a valid number"),
        (("inner", "a"), "type", "expected greater than or equal to 1"),
        (("inner", "b"), "unknown", "unknown key"),
        (("inners", 0), "value", "seven"),
        (("inners", 1), "type", "expected a mapping"),
        (("zz",), "unknown", "unknown key"),
        ((5,), "type", "keys should be strings"),
    ]


def test_a_key_that_is_not_unicode_refuses_the_mapping_alone() -> None:
    unicode = "expected a valid string, unable to parse raw data as a unicode string"
    assert issues({"n": 1, "inner": {"a": "x", "\ud800": 1}, "zz": 1}) == [
        (("inner",), "type", unicode),
        (("zz",), "unknown", "unknown key"),
    ]


def test_validators_run_on_valid_values_only() -> None:
    assert issues({"n": 1, "s": "q"}) == [(("s",), "value", "Not q")]
    assert issues({"n": 1, "s": 5}) == [(("s",), "type", "expected a valid string")]
    assert issues({"n": 1, "inner": {"a": 7}}) == [(("inner",), "value", "seven")]


def test_a_validated_model_is_frozen_equal_by_value_and_printable() -> None:
    model = Outer.model_validate({"n": 1, "secret": "pw", "secrets": {"u": "h"}, "names": ["a"]})
    with pytest.raises(FrozenError, match="frozen"):
        model.n = 2  # type: ignore[misc]
    assert model == Outer.model_validate({"n": 1, "secret": "pw", "secrets": {"u": "h"}, "names": ("a",)})
    assert model != Outer.model_validate({"n": 1, "secret": "other", "secrets": {"u": "h"}, "names": ["a"]})
    assert "pw" not in repr(model)
    assert repr(model).startswith("Outer(n=1, f=1.0, g=0.0, b=False, s=None, p='x', lit='x', names=('a',), ")
    assert "secret=SecretStr('**********')" in repr(model)
    dumped = model.model_dump(exclude={"inner"})
    assert dumped["names"] == ["a"]
    assert dumped["secret"] == "**********"
    assert dumped["secrets"] == {"u": "**********"}
    assert dict(model)["inner"] == Inner()
    assert model.model_copy(update={"n": 3}).n == 3


def test_constructing_validates() -> None:
    with pytest.raises(ValidationError) as raised:
        Inner(a=0)
    assert raised.value.issues == [Issue(("a",), "type", "expected greater than or equal to 1", 0)]
