"""The MongoDB releases the server can present itself as, and what tells a client which it is.

A driver decides what it may send from `hello`'s `maxWireVersion` (PyMongo refuses
`MongoClient.bulk_write` below 25, MongoDB 8.0); `buildInfo`, `serverStatus` and the
featureCompatibilityVersion say the same in words. Commands a release lacks are unknown to it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MONGODB_VERSION", "MONGODB_VERSIONS", "MongoDBVersion", "parse_mongodb_version"]


@dataclass(frozen=True)
class MongoDBVersion:
    """One MongoDB release as the server presents it."""

    name: str  # "8.0": the --mongodb-version choice and the featureCompatibilityVersion
    max_wire_version: int

    @property
    def release(self) -> tuple[int, int]:
        major, minor = self.name.split(".")
        return int(major), int(minor)

    @property
    def version(self) -> str:
        """The version string of `buildInfo` and `serverStatus`."""
        return f"{self.name}.0"

    @property
    def version_array(self) -> list[int]:
        return [*self.release, 0, 0]

    def at_least(self, name: str) -> bool:
        """Whether this release is `name` ("7.0", "8.0") or later."""
        major, minor = name.split(".")
        return self.release >= (int(major), int(minor))


MONGODB_VERSIONS = {
    # 6.0.0: no $changeStreamSplitLargeEvent (6.0.9), no `disambiguatedPaths` in update events
    # (6.1), no bulkWrite command (8.0).
    "6.0": MongoDBVersion("6.0", max_wire_version=17),
    "7.0": MongoDBVersion("7.0", max_wire_version=21),
    "8.0": MongoDBVersion("8.0", max_wire_version=25),
}
DEFAULT_MONGODB_VERSION = "8.0"


def parse_mongodb_version(name: str) -> MongoDBVersion:
    """The release called `name`; ValueError naming the choices for any other."""
    try:
        return MONGODB_VERSIONS[name]
    except KeyError:
        choices = " or ".join(sorted(MONGODB_VERSIONS))
        raise ValueError(
            f"unknown MongoDB version {name!r}: the development server can present itself as "
            f"MongoDB {choices}"
        ) from None
