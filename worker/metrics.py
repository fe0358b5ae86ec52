"""Prometheus metrics of one worker, named as in INTERFACE.md, on a registry of its own.

A registry per `Metrics` object (not the library's global one) lets tests and the demo run
several workers in one process without their series colliding.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from worker.state import STATES

__all__ = ["CONTENT_TYPE", "PAIR_STATES", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The seven states of a pair (INTERFACE.md, "Status"); `partner_sync_state` has one series each.
PAIR_STATES: tuple[str, ...] = STATES

# Batches hold up to batch.max_docs (default 500) patches; the buckets span one to a few
# thousand so a raised max_docs still lands in a finite bucket.
_BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# One applying transaction takes milliseconds on a healthy server; the top buckets catch the
# write-conflict retries and slow primaries worth alerting on.
_APPLY_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The worker's counters, gauges and histograms, and their exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.events = Counter(
            "partner_sync_events",
            "Change events read from the stream, by pair, side (original|partner) and operation.",
            ("pair", "side", "op"),
            registry=registry,
        )
        self.applied = Counter(
            "partner_sync_applied",
            "Patches written to the other side, by pair and direction (forward|backward).",
            ("pair", "direction"),
            registry=registry,
        )
        self.echoes_skipped = Counter(
            "partner_sync_echoes_skipped",
            "Change events recognised as the worker's own writes and not applied back.",
            ("pair",),
            registry=registry,
        )
        self.conflicts = Counter(
            "partner_sync_conflicts",
            "Patches skipped because a newer client write to the same field was still ahead.",
            ("pair",),
            registry=registry,
        )
        self.dead_letters = Counter(
            "partner_sync_dead_letters",
            "Changes a transform could not convert, written to the dead-letter collection.",
            ("pair",),
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "partner_sync_lag_seconds",
            "Seconds between a change's cluster time and the moment its batch was committed.",
            ("pair",),
            registry=registry,
        )
        self.batch_size = Histogram(
            "partner_sync_batch_size",
            "Patches per applied batch.",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.apply_seconds = Histogram(
            "partner_sync_apply_seconds",
            "Seconds to apply one batch, retries included.",
            buckets=_APPLY_SECONDS_BUCKETS,
            registry=registry,
        )
        self.lease_held = Gauge(
            "partner_sync_lease_held",
            "1 while this worker holds the lease and applies changes, 0 on standby.",
            registry=registry,
        )
        self.state = Gauge(
            "partner_sync_state",
            "1 for the pair's current state, 0 for the others.",
            ("pair", "state"),
            registry=registry,
        )

    def set_state(self, pair: str, state: str) -> None:
        """Mark `state` as the current state of `pair` (1) and every other state 0."""
        if state not in PAIR_STATES:
            raise ValueError(f"unknown pair state {state!r}; expected one of {PAIR_STATES}")
        for candidate in PAIR_STATES:
            self.state.labels(pair=pair, state=candidate).set(1 if candidate == state else 0)

    def render(self) -> bytes:
        """All series in the Prometheus text exposition format (content type `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
