"""Declarative validation of the configuration: frozen models with typed, bounded fields.

A model is a class of annotated fields (``size: Annotated[int, Field(ge=1)] = 5``). Validation is
strict: an ``int`` is an int (not a bool, a float or ``"5"``), a ``float`` an int or a float (kept as a
float), a ``str`` a string, a ``bool`` ``true``/``false``; a ``tuple[X, ...]`` declared
``Field(strict=False)`` also takes a list or a set. Supported types: those, ``SecretStr``,
``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]`` and nested models; constraints
``ge``, ``gt``, ``le``, ``lt``, ``min_length``, ``max_length`` and ``pattern`` (matched as a whole, ``$``
is the end of the text); bounds are checked ``le``, ``lt``, ``ge``, ``gt``, the first failing one
reported (a NaN fails whichever comes first). A key the model does not have is an error, and so is a
key that is not a string; a key that is not valid Unicode (a lone surrogate) refuses the whole
mapping with that one issue. A model instance where a model is expected is taken as it is.

Every problem is collected, in field order and then in the order of the unknown keys, as an
``Issue``: where (the key path), what (a message), and the rejected value; ``ValidationError`` holds
them all. ``@field_validator`` (before or after the type check) and ``@model_validator`` (before: on
the raw mapping; after: on the built model, only when every field is valid) add checks of their own;
a ``ValueError`` they raise becomes an issue at their key path, anything else passes through.
"""

from __future__ import annotations

import operator
import re
import types
import typing
from typing import TYPE_CHECKING, Any, Final, Literal, Union

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from typing_extensions import Self, dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Any:
        return lambda cls: cls


_F = typing.TypeVar("_F")
_SECRET_SHOWN: Final = "**********"  # noqa: S105 - what a secret shows, not one


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final[Any] = _Missing()
_INVALID: Final[Any] = object()  # what a check returns after recording an issue


class SecretStr:
    """A string that is not shown: ``repr``, ``str`` and a dump print ``**********``."""

    __slots__ = ("_secret",)

    def __init__(self, value: str) -> None:
        self._secret = value

    def get_secret_value(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return f"SecretStr({str(self)!r})"

    def __str__(self) -> str:
        return _SECRET_SHOWN if self._secret else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and self._secret == other._secret

    def __hash__(self) -> int:
        return hash(self._secret)

    def __len__(self) -> int:
        return len(self._secret)


class FieldSpec:
    """A field's default and constraints (made by ``Field``)."""

    def __init__(
        self,
        default: Any = MISSING,
        *,
        default_factory: typing.Callable[[], Any] | None = None,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        pattern: str | None = None,
        strict: bool | None = None,
        description: str | None = None,
    ) -> None:
        self.default = default
        self.default_factory = default_factory
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.min_length, self.max_length = min_length, max_length
        self.pattern = pattern
        self.strict = strict
        self.description = description


def Field(  # noqa: N802 - used like a class, in annotations and as a default
    default: Any = MISSING,
    *,
    default_factory: typing.Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    strict: bool | None = None,
    description: str | None = None,
) -> Any:
    """A field's default and constraints; in ``Annotated[...]`` or as the default value."""
    return FieldSpec(
        default,
        default_factory=default_factory,
        ge=ge,
        gt=gt,
        le=le,
        lt=lt,
        min_length=min_length,
        max_length=max_length,
        pattern=pattern,
        strict=strict,
        description=description,
    )


class FieldInfo:
    """A model's field as validation and the documentation see it: ``annotation`` without its outer
    ``Annotated``, whose constraints are in ``metadata``."""

    def __init__(self, name: str, hint: Any, value: Any) -> None:
        self.name = name
        metadata: list[FieldSpec] = []
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            metadata = [extra for extra in extras if isinstance(extra, FieldSpec)]
        self.annotation = hint
        given = value if isinstance(value, FieldSpec) else FieldSpec(value)
        if isinstance(value, FieldSpec):
            metadata.append(value)
        self.metadata = metadata
        self.default = given.default
        self.default_factory = given.default_factory
        self.description = given.description
        self.check = _checker(hint, metadata)

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.default_factory is None

    def get_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default


Loc = tuple[int | str, ...]


class Issue(typing.NamedTuple):
    """One problem: the key path (names and list indexes), its kind, the message, the value."""

    loc: Loc
    kind: Literal["unknown", "missing", "pattern", "value", "type"]
    message: str  # for "pattern": the pattern
    value: Any


class ValidationError(ValueError):
    """A configuration that does not validate: ``issues`` in the order they were found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(f"{len(issues)} problem(s), the first at {issues[0].loc}: {issues[0].message}")
        self.issues = issues


class FrozenError(ValueError):
    """Setting a field of a model: models are frozen."""


class ValidationInfo:
    """What a validator may ask about the validation: the ``context`` given to ``model_validate``."""

    __slots__ = ("context",)

    def __init__(self, context: dict[str, Any] | None) -> None:
        self.context = context


def field_validator(*names: str, mode: Literal["before", "after"] = "after") -> Callable[[_F], _F]:
    """A check of the named fields: ``(cls, value)`` or ``(cls, value, info)`` as a classmethod,
    returning the value to keep; ``before`` sees the raw value, ``after`` the typed one."""

    def mark(function: _F) -> _F:
        _function(function).__schema_validator__ = ("field", mode, names)
        return function

    return mark


def model_validator(*, mode: Literal["before", "after"]) -> Callable[[_F], _F]:
    """A check of the whole model: ``before`` as a classmethod on the raw mapping (returning the
    mapping to validate), ``after`` as a method ``(self)`` or ``(self, info)`` returning ``self``."""

    def mark(function: _F) -> _F:
        _function(function).__schema_validator__ = ("model", mode, ())
        return function

    return mark


class _Private:
    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


def private(default_factory: Callable[[], Any]) -> Any:
    """A model attribute that is not a field: ``_x: T = private(dict)``. Each model gets its own
    ``default_factory()``; an after-validator may replace it with ``object.__setattr__``."""
    return _Private(default_factory)


def _function(member: Any) -> Any:
    return member.__func__ if isinstance(member, classmethod | staticmethod) else member


def _takes_info(function: Any, arguments: int) -> bool:
    """Whether a validator takes ``info`` too, i.e. has ``arguments`` parameters (self or cls
    included)."""
    return bool(_function(function).__code__.co_argcount == arguments)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field, private))
class Model:
    """Base of the frozen, validated models. ``model_validate(mapping)`` or ``Model(**fields)``."""

    model_fields: typing.ClassVar[dict[str, FieldInfo]] = {}
    _private: typing.ClassVar[dict[str, _Private]] = {}
    _before: typing.ClassVar[list[Any]] = []
    _after: typing.ClassVar[list[Any]] = []
    _field_checks: typing.ClassVar[dict[str, tuple[list[Any], list[Any]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_fields, cls._private = {}, {}
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            value = getattr(cls, name, MISSING)
            if isinstance(value, _Private):
                cls._private[name] = value
            elif not name.startswith("_") and typing.get_origin(hint) is not typing.ClassVar:
                cls.model_fields[name] = FieldInfo(name, hint, value)
        cls._before, cls._after = [], []
        cls._field_checks = {name: ([], []) for name in cls.model_fields}
        for scope, mode, names, member in _validators(cls):
            if scope == "model":
                (cls._before if mode == "before" else cls._after).append(member)
            for name in names:
                cls._field_checks[name][0 if mode == "before" else 1].append(member)
        cls._before.reverse()  # the last declared runs first, as decorators stack

    def __init__(self, **data: Any) -> None:
        built = type(self).model_validate(data)
        object.__setattr__(self, "__dict__", built.__dict__)

    @classmethod
    def model_validate(cls, data: Any, *, context: dict[str, Any] | None = None) -> Self:
        """The model ``data`` describes; ``ValidationError`` with every issue found otherwise."""
        issues: list[Issue] = []
        result = cls.check_value(data, (), issues, ValidationInfo(context))
        if issues:
            raise ValidationError(issues)
        return typing.cast("Self", result)

    @classmethod
    def check_value(cls, data: Any, loc: Loc, issues: list[Issue], info: ValidationInfo) -> Any:
        """The model ``data`` describes, or ``_INVALID`` with the problems added to ``issues``."""
        try:
            for before in cls._before:
                data = _function(before)(cls, data)
        except ValueError as exc:
            issues.append(Issue(loc, "value", str(exc), data))
            return _INVALID
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            issues.append(Issue(loc, "type", "expected a mapping", data))
            return _INVALID
        found = len(issues)
        values = cls._values(data, loc, issues, info)
        if not _known_keys(cls.model_fields, data, loc, issues, found) or len(issues) > found:
            return _INVALID
        model = cls.__new__(cls)
        object.__setattr__(model, "__dict__", values)
        values.update((name, attribute.factory()) for name, attribute in cls._private.items())
        try:
            for after in cls._after:
                model = after(model, info) if _takes_info(after, 2) else after(model)
        except ValueError as exc:
            issues.append(Issue(loc, "value", str(exc), data))
            return _INVALID
        return model

    @classmethod
    def _values(
        cls, data: dict[Any, Any], loc: Loc, issues: list[Issue], info: ValidationInfo
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if name in data:
                values[name] = cls._check_field(field, data[name], (*loc, name), issues, info)
            elif field.required:
                issues.append(Issue((*loc, name), "missing", "required key is missing", data))
            else:
                values[name] = field.get_default()
        return values

    @classmethod
    def _check_field(
        cls, field: FieldInfo, value: Any, loc: Loc, issues: list[Issue], info: ValidationInfo
    ) -> Any:
        before, after = cls._field_checks[field.name]
        try:
            for check in before:
                value = _call(check, cls, value, info)
        except ValueError as exc:
            issues.append(Issue(loc, "value", str(exc), value))
            return _INVALID
        checked = field.check(value, loc, issues, info)
        if checked is _INVALID:
            return _INVALID
        try:
            for check in after:
                checked = _call(check, cls, checked, info)
        except ValueError as exc:
            issues.append(Issue(loc, "value", str(exc), value))
            return _INVALID
        return checked

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenError(f"{type(self).__name__} is frozen: {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"{type(self).__name__} is frozen: {name} cannot be deleted")

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """The fields as (name, value) pairs: ``dict(model)`` is a shallow mapping of them."""
        return ((name, self.__dict__[name]) for name in self.model_fields)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *(self.__dict__[name] for name in self.model_fields)))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self.model_fields)
        return f"{type(self).__name__}({shown})"

    def model_copy(self, *, update: dict[str, Any]) -> Self:
        """A copy with some fields replaced, not validated again."""
        copy = type(self).__new__(type(self))
        object.__setattr__(copy, "__dict__", {**self.__dict__, **update})
        return copy

    def model_dump(self, *, exclude: typing.AbstractSet[str] = frozenset()) -> dict[str, Any]:
        """The fields as JSON-ready values: mappings, lists, secrets as ``**********``."""
        return {name: _dump(self.__dict__[name]) for name in self.model_fields if name not in exclude}


def _validators(cls: type) -> Iterable[tuple[str, str, tuple[str, ...], Any]]:
    """The validators of ``cls`` and its bases, bases first; a redefined one replaces its base's."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            if hasattr(_function(member), "__schema_validator__"):
                found.pop(name, None)
                found[name] = member
    return [(*_function(member).__schema_validator__, member) for member in found.values()]


def _known_keys(
    fields: dict[str, FieldInfo], data: dict[Any, Any], loc: Loc, issues: list[Issue], found: int
) -> bool:
    """Add an issue for every key that is not a field; False when the mapping is refused as a whole
    (a key that is not valid Unicode), its other issues dropped."""
    for key, value in data.items():
        if isinstance(key, str) and not _unicode(key):
            del issues[found:]
            issues.append(Issue(loc, "type", _NOT_UNICODE, key))
            return False
        if not isinstance(key, str):
            issues.append(Issue((*loc, _key_loc(key)), "type", "keys should be strings", key))
        elif key not in fields:
            issues.append(Issue((*loc, key), "unknown", "unknown key", value))
    return True


def _call(check: Any, cls: type, value: Any, info: ValidationInfo) -> Any:
    function = _function(check)
    return function(cls, value, info) if _takes_info(check, 3) else function(cls, value)


def _dump(value: Any) -> Any:
    if isinstance(value, Model):
        return value.model_dump()
    if isinstance(value, tuple | list):
        return [_dump(item) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item) for key, item in value.items()}
    if isinstance(value, SecretStr):
        return str(value)
    return value


_NOT_UNICODE: Final = "expected a valid string, unable to parse raw data as a unicode string"


def _unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode: no lone surrogate (which JSON and YAML escapes can make)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key_loc(key: Any) -> int | str:
    """How a key that is not a string appears in a key path: a 64-bit int as such, else its repr."""
    if isinstance(key, int) and -(2**63) <= key < 2**63:
        return int(key)
    return repr(key)


# --- checks per type ---------------------------------------------------------------------------

Check = typing.Callable[[Any, Loc, list[Issue], ValidationInfo], Any]


def _checker(hint: Any, constraints: list[FieldSpec]) -> Check:
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(hint)
        return _checker(inner, [*constraints, *(e for e in extras if isinstance(e, FieldSpec))])
    if origin in (Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(members) != 1 or len(typing.get_args(hint)) != 2:  # noqa: PLR2004
            raise TypeError(f"unsupported union {hint}: only X | None")
        return _nullable(_checker(members[0], constraints))
    if origin is Literal:
        return _literal(typing.get_args(hint))
    if origin is tuple:
        item, ellipsis = typing.get_args(hint)
        if ellipsis is not Ellipsis:
            raise TypeError(f"unsupported tuple {hint}: only tuple[X, ...]")
        lax = any(c.strict is False for c in constraints)
        return _sequence(_checker(item, []), lax)
    if origin is dict:
        key, value = typing.get_args(hint)
        return _mapping(_checker(key, []), _checker(value, []))
    if isinstance(hint, type) and issubclass(hint, Model):
        return hint.check_value
    scalar = _SCALARS.get(hint)
    if scalar is None:
        raise TypeError(f"unsupported field type {hint}")
    return scalar(_Bounds(constraints))


class _Bounds:
    def __init__(self, constraints: list[FieldSpec]) -> None:
        def last(attribute: str) -> Any:
            values = [getattr(c, attribute) for c in constraints if getattr(c, attribute) is not None]
            return values[-1] if values else None

        self.le, self.lt, self.ge, self.gt = last("le"), last("lt"), last("ge"), last("gt")
        self.min_length, self.max_length = last("min_length"), last("max_length")
        self.pattern = last("pattern")
        # A pattern matches the whole text: its "$" is the end of the text, never before a final "\n".
        self.regex = None if self.pattern is None else re.compile(re.sub(r"\$$", r"\\Z", self.pattern))
        # A string checked against a length or pattern must be valid Unicode (no lone surrogate).
        self.constrained = (self.min_length, self.max_length, self.pattern) != (None, None, None)

    def number(self, value: float, original: Any, loc: Loc, issues: list[Issue]) -> Any:
        # In this order: a NaN fails the first bound there is.
        for bound, holds, words in (
            (self.le, operator.le, "less than or equal to"),
            (self.lt, operator.lt, "less than"),
            (self.ge, operator.ge, "greater than or equal to"),
            (self.gt, operator.gt, "greater than"),
        ):
            if bound is not None and not holds(value, bound):
                shown = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
                issues.append(Issue(loc, "type", f"expected {words} {shown}", original))
                return _INVALID
        return value


def _int(bounds: _Bounds) -> Check:
    def check(value: Any, loc: Loc, issues: list[Issue], _info: ValidationInfo) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            issues.append(Issue(loc, "type", "expected a valid integer", value))
            return _INVALID
        return bounds.number(value, value, loc, issues)

    return check


def _float(bounds: _Bounds) -> Check:
    def check(value: Any, loc: Loc, issues: list[Issue], _info: ValidationInfo) -> Any:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = None
        if number is None:
            issues.append(Issue(loc, "type", "expected a valid number", value))
            return _INVALID
        return bounds.number(number, value, loc, issues)

    return check


def _bool(_bounds: _Bounds) -> Check:
    def check(value: Any, loc: Loc, issues: list[Issue], _info: ValidationInfo) -> Any:
        if value is True or value is False:
            return value
        issues.append(Issue(loc, "type", "expected a valid boolean", value))
        return _INVALID

    return check


def _str(bounds: _Bounds) -> Check:
    def check(value: Any, loc: Loc, issues: list[Issue], _info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            issues.append(Issue(loc, "type", "expected a valid string", value))
            return _INVALID
        if bounds.constrained and not _unicode(value):
            issues.append(Issue(loc, "type", _NOT_UNICODE, value))
            return _INVALID
        if bounds.min_length is not None and len(value) < bounds.min_length:
            unit = "character" if bounds.min_length == 1 else "characters"
            issues.append(
                Issue(loc, "type", f"string should have at least {bounds.min_length} {unit}", value)
            )
            return _INVALID
        if bounds.max_length is not None and len(value) > bounds.max_length:
            unit = "character" if bounds.max_length == 1 else "characters"
            issues.append(Issue(loc, "type", f"string should have at most {bounds.max_length} {unit}", value))
            return _INVALID
        if bounds.regex is not None and bounds.regex.search(value) is None:
            issues.append(Issue(loc, "pattern", str(bounds.pattern), value))
            return _INVALID
        return value

    return check


def _secret(_bounds: _Bounds) -> Check:
    def check(value: Any, loc: Loc, issues: list[Issue], _info: ValidationInfo) -> Any:
        if isinstance(value, SecretStr):
            return value
        if isinstance(value, str):
            return SecretStr(value)
        issues.append(Issue(loc, "type", "expected a valid string", value))
        return _INVALID

    return check


_SCALARS: Final[dict[Any, typing.Callable[[_Bounds], Check]]] = {
    int: _int,
    float: _float,
    bool: _bool,
    str: _str,
    SecretStr: _secret,
}


def _nullable(inner: Check) -> Check:
    def check(value: Any, loc: Loc, issues: list[Issue], info: ValidationInfo) -> Any:
        return None if value is None else inner(value, loc, issues, info)

    return check


def _literal(choices: tuple[Any, ...]) -> Check:
    shown = [repr(choice) for choice in choices]
    expected = "expected " + (f"{', '.join(shown[:-1])} or {shown[-1]}" if shown[1:] else shown[0])

    def check(value: Any, loc: Loc, issues: list[Issue], _info: ValidationInfo) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str) and not _unicode(value):
            issues.append(Issue(loc, "type", _NOT_UNICODE, value))
            return _INVALID
        issues.append(Issue(loc, "type", expected, value))
        return _INVALID

    return check


def _sequence(item: Check, lax: bool) -> Check:
    accepted = (list, tuple, set, frozenset) if lax else (tuple,)

    def check(value: Any, loc: Loc, issues: list[Issue], info: ValidationInfo) -> Any:
        if not isinstance(value, accepted):
            issues.append(Issue(loc, "type", "expected a valid tuple", value))
            return _INVALID
        found = len(issues)
        items = tuple(item(each, (*loc, index), issues, info) for index, each in enumerate(value))
        return _INVALID if len(issues) > found else items

    return check


def _mapping(key: Check, value: Check) -> Check:
    def check(data: Any, loc: Loc, issues: list[Issue], info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            issues.append(Issue(loc, "type", "expected a valid dictionary", data))
            return _INVALID
        found = len(issues)
        checked = {
            key(name, (*loc, name, "[key]"), issues, info): value(each, (*loc, name), issues, info)
            for name, each in data.items()
        }
        return _INVALID if len(issues) > found else checked

    return check
