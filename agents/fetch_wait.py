"""How long the hot path's consumer lets the broker hold a fetch: as short as the broker allows, no shorter.

Why it adapts (measured on the embedded Tansu broker, docs/performance.md): Tansu does not answer a fetch the moment
data arrives but looks again only a few times during its wait (a record produced while a fetch is pending comes back
within about half the wait), so the wait sets the floor of the event -> recommendation latency; and its in-memory
log scans every stored batch of a partition on each fetch (about 1 us per batch: a partition of 20,000 one-record
batches needs a 20 ms wait before a fetch returns anything). A fetch whose scan outlasts the wait comes back empty
*with a high watermark ahead of the consumer's position*, and then every later fetch does too: the consumer stops
receiving records although they are in the broker. A fixed short wait is fast on a small log and dead on a large
one; a fixed long wait is safe and slow.

:class:`FetchWait` starts at ``floor``; polls that return nothing while a partition's high watermark is ahead of
its position for two full waits (a *stall*) double the wait, up to ``ceiling``; after ``probe_s`` without a stall
it tries half the wait again (a log only grows, so a probe that stalls goes straight back). On Apache Kafka a fetch
returns as soon as data is there, so the wait only paces idle fetches and the worker keeps a fixed one (floor =
ceiling).

:class:`FetchWaitTuner` applies it to an aiokafka consumer. aiokafka reads the fetcher's wait each time it builds a
fetch request, but exposes no setter: the tuner writes the private attribute when it exists and otherwise stays
at the configured wait (logged once).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError

from kairos.engine import metrics

log = logging.getLogger(__name__)

#: Added to two waits before "behind with nothing returned" counts as a stall (scheduling noise, the round trip).
STALL_MARGIN_S = 0.02


@dataclass(slots=True)
class FetchWait:
    """The controller, without a consumer (unit-tested on its own)."""

    floor_ms: int
    ceiling_ms: int
    probe_s: float = 30.0
    wait_ms: int = field(init=False)
    stalls: int = field(default=0, init=False)
    _last_change: float = field(default=float("-inf"), init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.floor_ms <= self.ceiling_ms:
            raise ValueError(f"need 1 <= floor ({self.floor_ms}) <= ceiling ({self.ceiling_ms})")
        self.wait_ms = self.floor_ms

    @property
    def adaptive(self) -> bool:
        return self.floor_ms < self.ceiling_ms

    def on_stall(self, now: float) -> bool:
        """A poll came back empty while records were waiting in the broker; True when the wait changed."""
        self.stalls += 1
        self._last_change = now
        raised = min(self.wait_ms * 2, self.ceiling_ms)
        changed, self.wait_ms = raised != self.wait_ms, raised
        return changed

    def on_records(self, now: float) -> bool:
        """A poll returned records; after ``probe_s`` quiet seconds above the floor, try half the wait."""
        if self.wait_ms <= self.floor_ms or now - self._last_change < self.probe_s:
            return False
        self._last_change = now
        self.wait_ms = max(self.wait_ms // 2, self.floor_ms)
        return True


class FetchWaitTuner:
    """:class:`FetchWait` applied to a running consumer: call :meth:`after_poll` after every ``getmany``."""

    def __init__(self, consumer: AIOKafkaConsumer, control: FetchWait) -> None:
        self.consumer = consumer
        self.control = control
        fetcher = getattr(consumer, "_fetcher", None)
        self._settable = fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms")
        #: When the consumer was first seen behind a high watermark with nothing returned (None: it is not).
        self._behind_since: float | None = None
        if control.adaptive and not self._settable:
            log.warning("this aiokafka has no fetcher wait to adjust: the fetch wait stays at %d ms", control.wait_ms)
        self._apply()

    @property
    def wait_ms(self) -> int:
        return self.control.wait_ms

    async def after_poll(self, got_records: bool) -> None:
        if not (self.control.adaptive and self._settable):
            return
        now = time.monotonic()
        if got_records:
            self._behind_since = None
            changed = self.control.on_records(now)
        elif await self._stalled(now):
            metrics.FETCH_STALLS.inc()
            changed = self.control.on_stall(now)
            if changed:
                log.info("fetches came back empty with records waiting: fetch wait now %d ms", self.control.wait_ms)
        else:
            return
        if changed:
            self._apply()

    async def _stalled(self, now: float) -> bool:
        """After an empty poll: has the consumer been behind a high watermark for two full waits? A response may
        report a high watermark that counts a record appended after its batches were read, so being behind for a
        moment is normal; a stall starts the count again."""
        if not await self._behind():
            self._behind_since = None
            return False
        if self._behind_since is None:
            self._behind_since = now
            return False
        if now - self._behind_since < 2 * self.control.wait_ms / 1000.0 + STALL_MARGIN_S:
            return False
        self._behind_since = now
        return True

    async def _behind(self) -> bool:
        """Is a partition's high watermark (from the last fetch response) ahead of the consumer's position?"""
        consumer = self.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue  # no fetch response for it yet
            try:
                if highwater > await consumer.position(tp):
                    return True
            except IllegalStateError:
                continue  # revoked since assignment() was read
        return False

    def _apply(self) -> None:
        if self._settable:
            self.consumer._fetcher._fetch_max_wait_ms = self.control.wait_ms
        metrics.FETCH_WAIT.set(self.control.wait_ms / 1000.0)
