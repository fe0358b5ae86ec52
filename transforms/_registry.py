"""The set of loaded pairs, and the lookup from a change event's namespace to its pairs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from transforms._pair import Pair

__all__ = ["Registry", "Side"]

Side = Literal["original", "partner"]


class Registry:
    """Every loaded pair; a collection may belong to two pairs (a chain of migrations)."""

    def __init__(self, pairs: Iterable[Pair]) -> None:
        self.pairs: tuple[Pair, ...] = tuple(pairs)
        index: dict[str, list[tuple[Pair, Side]]] = {}
        for pair in self.pairs:
            index.setdefault(pair.original, []).append((pair, "original"))
            index.setdefault(pair.partner, []).append((pair, "partner"))
        self._index = index
        self.namespaces: frozenset[str] = frozenset(index)

    def by_namespace(self, ns: str) -> list[tuple[Pair, Side]]:
        """(pair, side) for every pair `ns` belongs to; empty when it belongs to none."""
        return list(self._index.get(ns, ()))

    def by_original(self, ns: str) -> Pair | None:
        """The pair whose original namespace is `ns` (what `--pair NS` names)."""
        for pair, side in self._index.get(ns, ()):
            if side == "original":
                return pair
        return None

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"Registry({', '.join(pair.name for pair in self.pairs)})"
