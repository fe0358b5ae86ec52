"""Aggregation stages and expressions that mongomock lacks, and the stages updates allow.

mongomock (4.3) evaluates the development server's pipelines. It has no `$unset` or
`$replaceWith` stage and no `$getField`, `$setField` or `$unsetField` expression (MongoDB 5.0,
the way to read and write fields whose names hold a `.` or start with `$`). The two stages are
written as the stages they stand for (`rewrite_stage`), and the three expressions are taught to
mongomock's expression parser (`install`) with MongoDB's argument rules and messages, as is
`$mergeObjects` (the usual argument of `$replaceWith`), which mongomock also lacks. An
update's pipeline may use only the stages MongoDB allows there (`prepared(update=True)`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mongomock import aggregate

from devserver._errors import CommandError, bson_type_name

__all__ = ["UPDATE_STAGES", "install", "prepared", "rewrite_stage", "stage_parts"]

# The stages an update's pipeline may hold (MongoDB 4.2 and later; `$fill` from 7.0 is not here).
UPDATE_STAGES = frozenset(
    {"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"}
)
_INVALID_OPTIONS = 72


def _located(code: int, message: str) -> CommandError:
    """An error as mongod names it by its assertion code."""
    return CommandError(code, f"Location{code}", message)


def prepared(pipeline: list[Any], *, update: bool = False) -> list[dict[str, Any]]:
    """`pipeline` with the stages mongomock lacks written as ones it has; with `update`,
    refused as MongoDB refuses a stage that an update's pipeline may not hold."""
    stages: list[dict[str, Any]] = []
    for stage in pipeline:
        name, argument = stage_parts(stage)
        if update and name not in UPDATE_STAGES:
            if name not in aggregate._PIPELINE_HANDLERS:
                raise _located(40324, f"Unrecognized pipeline stage name: '{name}'")
            raise CommandError(
                _INVALID_OPTIONS,
                "InvalidOptions",
                f"{name} is not allowed to be used within an update",
            )
        name, argument = rewrite_stage(name, argument)
        stages.append({name: argument})
    return stages


def stage_parts(stage: Any) -> tuple[str, Any]:
    """(name, argument) of a pipeline stage, which must be a document of one field."""
    if not isinstance(stage, Mapping) or len(stage) != 1:
        raise _located(
            40323, "A pipeline stage specification object must contain exactly one field."
        )
    ((name, argument),) = stage.items()
    return name, argument


def rewrite_stage(name: str, argument: Any) -> tuple[str, Any]:
    """`$replaceWith` as the `$replaceRoot` it abbreviates, `$unset` as an exclusion
    `$project`; other stages as they are."""
    if name == "$replaceWith":
        return "$replaceRoot", {"newRoot": argument}
    if name == "$unset":
        fields = [argument] if isinstance(argument, str) else argument
        if (
            not isinstance(fields, list)
            or not fields
            or not all(isinstance(f, str) and f for f in fields)
        ):
            raise _located(31002, "$unset specification must be a string or an array")
        return "$project", {f: 0 for f in fields}
    return name, argument


# -- $getField, $setField, $unsetField --------------------------------------------------------


def _arguments(
    operator: str,
    argument: Any,
    allowed: tuple[str, ...],
    required: tuple[str, ...],
    codes: tuple[int, int, int],
) -> Mapping[str, Any]:
    """The operator's named arguments, checked as MongoDB parses them."""
    not_object, unknown, missing = codes
    if not isinstance(argument, Mapping):
        raise _located(not_object, f"{operator} only supports an object as its argument")
    for key in argument:
        if key not in allowed:
            raise _located(unknown, f"{operator} found an unknown argument: {key}")
    for key in required:
        if key not in argument:
            raise _located(missing, f"{operator} requires '{key}' to be specified")
    return argument


def _field_name(operator: str, field: Any, codes: tuple[int, int, int]) -> str:
    """The constant string `field` names: a plain string, or one given as `$literal` (the only
    way to name a field starting with `$`)."""
    non_constant, not_string, field_path = codes
    if isinstance(field, str) and field.startswith("$"):
        path = field[1:] if field.startswith("$$") else f"$CURRENT.{field[1:]}"
        raise _located(
            field_path,
            f"'{path}' is a field path reference which is not allowed in this context. Did you"
            f" mean {{$literal: '{path}'}}?",
        )
    if isinstance(field, Mapping) and len(field) == 1 and next(iter(field)) in _CONSTANTS:
        field = next(iter(field.values()))
    elif isinstance(field, (Mapping, list)):
        raise _located(
            non_constant,
            f"{operator} requires 'field' to evaluate to a constant, but got a non-constant"
            " argument",
        )
    if not isinstance(field, str):
        raise _located(
            not_string,
            f"{operator} requires 'field' to evaluate to type String, but got"
            f" {bson_type_name(field)}",
        )
    return field


_CONSTANTS = ("$literal", "$const")
_SET_CODES = (4161100, 4161101, 4161102)
_SET_FIELD_CODES = (4161105, 4161106, 4161108)
_GET_CODES = (3041700, 3041701, 3041702)
_GET_FIELD_CODES = (3041703, 3041704, 5654600)


def _set_field(parser: Any, operator: str, argument: Any) -> Any:
    names = ("field", "input", "value") if operator == "$setField" else ("field", "input")
    arguments = _arguments(operator, argument, names, ("field",), _SET_CODES)
    if operator == "$setField" and "value" not in arguments:
        raise _located(4161103, "$setField requires 'value' to be specified")
    if "input" not in arguments:
        raise _located(4161104, f"{operator} requires 'input' to be specified")
    name = _field_name(operator, arguments["field"], _SET_FIELD_CODES)
    try:
        document = parser.parse(arguments["input"])
    except KeyError:
        return None  # missing input: null, and nothing is set
    if document is None:
        return None
    if not isinstance(document, Mapping):
        # mongod names $setField here for $unsetField too: one is the other with $$REMOVE.
        raise _located(4161109, "$setField requires 'input' to evaluate to type Object")
    result = dict(document)  # `$$ROOT` is the document itself: never change it in place
    removed = operator == "$unsetField"
    if not removed:
        try:
            value = parser.parse(arguments["value"])
        except KeyError:
            removed = True  # a missing value, `$$REMOVE` among them, removes the field
    if removed:
        result.pop(name, None)
    else:
        result[name] = value  # an existing field keeps its place
    return result


def _get_field(parser: Any, operator: str, argument: Any) -> Any:
    if isinstance(argument, Mapping) and not any(k.startswith("$") for k in argument):
        arguments = _arguments(operator, argument, ("field", "input"), ("field",), _GET_CODES)
        field, source = arguments["field"], arguments.get("input", "$$CURRENT")
    else:
        field, source = argument, "$$CURRENT"  # the short form: the field's name alone
    name = _field_name(operator, field, _GET_FIELD_CODES)
    try:
        document = parser.parse(source)
    except KeyError:
        return None
    if document is None:
        return None
    if not isinstance(document, Mapping):
        raise _located(3041705, "$getField requires 'input' to evaluate to type Object")
    if name not in document:
        raise KeyError(name)  # mongomock's "missing": the enclosing stage leaves it out
    return document[name]


def _merge_objects(parser: Any, operator: str, argument: Any) -> Any:
    """The documents merged left to right (a later one's fields win); null and missing
    arguments are passed over."""
    merged: dict[str, Any] = {}
    for expression in argument if isinstance(argument, list) else [argument]:
        try:
            value = parser.parse(expression)
        except KeyError:
            continue
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise _located(
                40400,
                f"$mergeObjects requires object inputs, but input {value!r} is of type"
                f" {bson_type_name(value)}",
            )
        merged.update(value)
    return merged


_OPERATORS: dict[str, Callable[[Any, str, Any], Any]] = {
    "$getField": _get_field,
    "$mergeObjects": _merge_objects,
    "$setField": _set_field,
    "$unsetField": _set_field,
}


def install() -> None:
    """Teach mongomock's expression parser these expressions (once per process)."""
    parser_class: Any = aggregate._Parser
    if getattr(parser_class, "_devserver_field_operators", False):
        return
    original = parser_class.parse

    def parse(self: Any, expression: Any) -> Any:
        if isinstance(expression, Mapping) and len(expression) == 1:
            ((name, argument),) = expression.items()
            handler = _OPERATORS.get(name)
            if handler is not None:
                return handler(self, name, argument)
        return original(self, expression)

    parser_class.parse = parse
    parser_class._devserver_field_operators = True
