"""The stages a change stream accepts after `$changeStream`, evaluated on one event at a time.

Evaluation borrows mongomock's aggregation and query machinery, so filters and expressions
behave like the rest of the development server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from bson import Timestamp
from mongomock import OperationFailure, aggregate, filtering, helpers

from devserver._errors import CommandError
from devserver._fastfilter import Compiled, compile_event_filter
from devserver._pipeline import rewrite_stage, stage_parts

__all__ = ["EventPipeline", "MAX_EVENT_BYTES", "SPLIT_STAGE"]

SPLIT_STAGE = "$changeStreamSplitLargeEvent"
# BSONObjMaxUserSize: the largest document a reply may carry.
MAX_EVENT_BYTES = 16 * 1024 * 1024

_ALLOWED = frozenset(
    {
        "$match",
        "$project",
        "$addFields",
        "$set",
        "$unset",
        "$replaceRoot",
        "$replaceWith",
        "$redact",
        SPLIT_STAGE,
    }
)
_ILLEGAL_OPERATION = 20
# mongomock is untyped; these are the entry points used here.
_filter_applies: Callable[[Any, Any], bool] = filtering.filter_applies
_patch_datetimes: Callable[[Any], Any] = helpers.patch_datetime_awareness_in_document
_HANDLERS: dict[str, Any] = aggregate._PIPELINE_HANDLERS
_MODIFIED_ID_MESSAGE = (
    "Encountered an event whose _id field, which contains the resume token, was modified by "
    "the pipeline. Modifying the _id field of an event makes it impossible to resume the "
    "stream from that point. Only transformations that retain the unmodified _id field are "
    "allowed."
)

Stage = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class EventPipeline:
    """The user's stages after `$changeStream`, compiled once per cursor."""

    def __init__(self, stages: list[Any]) -> None:
        self._stages: list[Stage] = []
        self._copies = False
        self.splits_large_events = False
        #: Every stage is a `$match`: an event leaves the pipeline as it came in, or not at all.
        self.filters_only = True
        # The leading `$match` stages' compiled tests when none reads an image field: they
        # decide on an event without its images, before the post-image lookup is paid for.
        self._early: list[Compiled] | None = []
        for position, stage in enumerate(stages):
            name, argument = stage_parts(stage)
            self._compile(name, argument, last=position == len(stages) - 1)

    def _compile(self, name: str, argument: Any, *, last: bool) -> None:
        if name == "$changeStream":
            raise CommandError(
                40602,
                "Location40602",
                "$changeStream is only valid as the first stage in a pipeline.",
            )
        if name not in _ALLOWED:
            raise CommandError(
                _ILLEGAL_OPERATION,
                "IllegalOperation",
                f"{name} is not permitted in a $changeStream pipeline",
            )
        if name == SPLIT_STAGE:
            if not last:
                raise CommandError(
                    7182802,
                    "Location7182802",
                    f"{SPLIT_STAGE} must be the last stage in the pipeline",
                )
            if argument != {}:
                raise CommandError(
                    7182800,
                    "Location7182800",
                    f"{SPLIT_STAGE} expects an empty document as its argument",
                )
            self.splits_large_events = True
            return
        if name == "$match":
            stage, fast = _match_stage(argument)
            self._stages.append(stage)
            early = self._early
            leading = early is not None and len(early) == len(self._stages) - 1
            if early is not None and leading and fast is not None and _reads_no_image(argument):
                early.append(fast)
            return
        if name == "$redact":
            raise CommandError(
                _ILLEGAL_OPERATION,
                "IllegalOperation",
                "$redact in a $changeStream pipeline is not supported by the development server",
            )
        if name in ("$addFields", "$set") and isinstance(argument, Mapping):
            # mongomock writes dotted fields into the nested documents it was given.
            self._copies = self._copies or any("." in str(k) for k in argument)
        self.filters_only = False
        self._stages.append(_transform_stage(name, argument))

    @property
    def reads_images(self) -> bool:
        """Whether the stages may need an event's images to decide whether it is shown."""
        return not self._early

    def rejects_early(self, event: dict[str, Any]) -> bool:
        """True when the leading `$match` stages drop `event`, which lacks its images; False
        when it passes them or they cannot tell (the whole pipeline decides then)."""
        for test in self._early or ():
            if test(event) is False:
                return True
        return False

    def apply(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event after the user's stages, or None when a `$match` dropped it."""
        token = event["_id"]
        current: dict[str, Any] | None = copy.deepcopy(event) if self._copies else event
        for stage in self._stages:
            if current is None:
                return None
            current = stage(current)
        if current is not None and current.get("_id") != token:
            raise CommandError(280, "ChangeStreamFatalError", _MODIFIED_ID_MESSAGE)
        return current


# Event fields that hold documents the server looks up or copies for the event.
_IMAGE_FIELDS = frozenset({"fullDocument", "fullDocumentBeforeChange"})


def _reads_no_image(spec: Mapping[str, Any]) -> bool:
    """Whether every path a `$match` filter reads lies outside the image fields."""
    paths = _filter_paths(spec)
    return paths is not None and all(path.split(".", 1)[0] not in _IMAGE_FIELDS for path in paths)


def _filter_paths(spec: Mapping[str, Any]) -> set[str] | None:
    """The field paths a filter reads (through `$and` / `$or`), or None for other operators."""
    paths: set[str] = set()
    for key, condition in spec.items():
        if key in ("$and", "$or") and isinstance(condition, list):
            for clause in condition:
                inner = _filter_paths(clause) if isinstance(clause, Mapping) else None
                if inner is None:
                    return None
                paths |= inner
        elif key.startswith("$"):
            return None
        else:
            paths.add(key)
    return paths


def _match_stage(spec: Any) -> tuple[Stage, Compiled | None]:
    """The stage, and its compiled fast test when the filter has one."""
    if not isinstance(spec, Mapping):
        raise CommandError(
            15959, "Location15959", "the match filter must be an expression in an object"
        )
    patched = _patch_datetimes(dict(spec))
    # mongomock cannot compare Timestamps (clusterTime); compare them as integers instead,
    # converting events only for filters that mention one.
    has_timestamps = _contains_timestamp(patched)
    if has_timestamps:
        patched = _timestamps_as_ints(patched)
    # Validate the filter once, so a bad operator fails the aggregate, not a later getMore.
    _run(lambda: _filter_applies(patched, {}))
    # Namespace and document-key filters (the commonest) skip mongomock's interpreter.
    fast = None if has_timestamps else compile_event_filter(patched)

    def match(event: dict[str, Any]) -> dict[str, Any] | None:
        if fast is not None:
            verdict = fast(event)
            if verdict is not None:
                return event if verdict else None
        # Events hold naive UTC datetimes already, so only the filter needed patching.
        document = _timestamps_as_ints(event) if has_timestamps else event
        return event if _run(lambda: _filter_applies(patched, document)) else None

    return match, fast


def _contains_timestamp(value: Any) -> bool:
    if isinstance(value, Timestamp):
        return True
    if isinstance(value, Mapping):
        return any(_contains_timestamp(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_timestamp(v) for v in value)
    return False


def _timestamps_as_ints(value: Any) -> Any:
    if isinstance(value, Timestamp):
        return (value.time << 32) | value.inc
    if isinstance(value, Mapping):
        return {k: _timestamps_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_timestamps_as_ints(v) for v in value]
    return value


def _transform_stage(name: str, argument: Any) -> Stage:
    name, argument = rewrite_stage(name, argument)
    if not isinstance(argument, Mapping):
        raise CommandError(
            40272 if name == "$project" else 40228,
            "Location40272" if name == "$project" else "Location40228",
            f"{name} specification must be an object",
        )
    handler = _HANDLERS[name]
    options = dict(argument)

    def transform(event: dict[str, Any]) -> dict[str, Any] | None:
        (result,) = _run(lambda: handler([event], None, options))
        return dict(result)

    return transform


def _run(call: Callable[[], Any]) -> Any:
    """Run mongomock code, turning its failures into MongoDB-shaped command errors."""
    try:
        return call()
    except OperationFailure as exc:
        raise CommandError(
            exc.code or 2, "BadValue" if not exc.code else "Location" + str(exc.code), str(exc)
        ) from exc
    except NotImplementedError as exc:
        raise CommandError(
            _ILLEGAL_OPERATION,
            "IllegalOperation",
            f"not supported by the development server in a change stream: {exc}",
        ) from exc
