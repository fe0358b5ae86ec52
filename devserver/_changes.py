"""Change streams of the development server: the change history and its cursors.

The core server appends a `ChangeRecord` list per committed write or transaction to a
`ChangeHistory`, and serves `aggregate` / `getMore` on `$changeStream` from the
`ChangeStreamCursor`s that `ChangeHistory.open` returns.
"""

from __future__ import annotations

from devserver._change_diff import UpdateDescription, describe_update
from devserver._change_history import (
    ChangeHistory,
    ChangeRecord,
    ChangeStreamCursor,
    history_lost,
)
from devserver._change_token import ResumeToken, decode_token

__all__ = [
    "ChangeHistory",
    "ChangeRecord",
    "ChangeStreamCursor",
    "ResumeToken",
    "UpdateDescription",
    "decode_token",
    "describe_update",
    "history_lost",
]
