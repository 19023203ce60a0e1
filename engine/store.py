"""The state-store interface the engine persists partition state through, and an in-memory implementation.

The contract (docs/state.md): ``commit`` applies user states, deletions, input offsets, serving records and an
optional global checkpoint **atomically**; ``load`` returns what the last commit left. Because offsets are
committed with the state they produced, a restarted worker resumes exactly where its state was saved.

The store holds every user's state; a worker keeps only the recently active ones in memory (``load_users`` reads
the others back when they return) and ``expire_users`` forgets users idle past the expiry that no worker holds.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ServingRecord:
    """A recommendation for the storefront; written only if newer than what is stored ("newer event wins")."""

    user_id: str
    event_ts: float
    #: Tie-breaker for equal event times: the user's state version (monotonic per user).
    sequence: int
    payload: bytes


@dataclass(slots=True)
class PartitionSnapshot:
    users: dict[str, bytes] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    global_blob: bytes | None = None
    global_offsets: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Commit:
    partition: int
    users: Mapping[str, bytes]
    deleted: Sequence[str]
    offsets: Mapping[str, int]
    serving: Sequence[ServingRecord] = ()
    global_checkpoint: tuple[bytes | bytearray, Mapping[str, int]] | None = None  # a sliced build gives a bytearray
    #: Last event time of each user in ``users`` (the store's idle index).
    activity: Mapping[str, float] = field(default_factory=dict)
    #: State version of each user in ``users`` when the commit was built: a user changed again since (by a later
    #: batch, while this commit was in flight) stays dirty after it is confirmed.
    versions: Mapping[str, int] = field(default_factory=dict)


class StateStore(Protocol):
    async def load(self, partition: int, *, with_users: bool = True) -> PartitionSnapshot: ...

    async def load_users(self, partition: int, user_ids: Iterable[str]) -> dict[str, bytes]: ...

    async def expire_users(self, partition: int, idle_before: float, keep: Collection[str], limit: int = 1000) -> list[str]: ...

    async def commit(self, commit: Commit) -> None: ...

    async def publish_trending(self, items: list[str]) -> None: ...


def newer(stored: tuple[float, int] | None, incoming: tuple[float, int]) -> bool:
    """The serving rule: a later event time wins; for equal times the higher state version wins.

    >>> newer((10.0, 3), (10.0, 4)), newer((10.0, 3), (9.0, 9)), newer(None, (0.0, 0))
    (True, False, True)
    """
    return stored is None or incoming > stored


class InMemoryStateStore:
    """For unit tests and offline runs; same semantics as the Redis store."""

    def __init__(self) -> None:
        self.partitions: dict[int, PartitionSnapshot] = {}
        self.serving: dict[str, tuple[float, int, bytes]] = {}
        self.trending: list[str] = []
        self.activity: dict[int, dict[str, float]] = {}
        self.commits = 0

    async def load(self, partition: int, *, with_users: bool = True) -> PartitionSnapshot:
        snap = self.partitions.get(partition, PartitionSnapshot())
        users = dict(snap.users) if with_users else {}
        return PartitionSnapshot(users, dict(snap.offsets), snap.global_blob, dict(snap.global_offsets))

    async def load_users(self, partition: int, user_ids: Iterable[str]) -> dict[str, bytes]:
        users = self.partitions.get(partition, PartitionSnapshot()).users
        return {uid: users[uid] for uid in user_ids if uid in users}

    async def expire_users(self, partition: int, idle_before: float, keep: Collection[str], limit: int = 1000) -> list[str]:
        activity = self.activity.get(partition, {})
        idle = [uid for uid, ts in sorted(activity.items(), key=lambda kv: kv[1]) if ts < idle_before and uid not in keep]
        idle = idle[:limit]
        for uid in idle:
            del activity[uid]
            self.partitions[partition].users.pop(uid, None)
        return idle

    async def commit(self, commit: Commit) -> None:
        snap = self.partitions.setdefault(commit.partition, PartitionSnapshot())
        snap.users.update(commit.users)
        activity = self.activity.setdefault(commit.partition, {})
        activity.update(commit.activity)
        for user_id in commit.deleted:
            snap.users.pop(user_id, None)
            activity.pop(user_id, None)
        snap.offsets.update(commit.offsets)
        if commit.global_checkpoint is not None:
            snap.global_blob, offsets = commit.global_checkpoint
            snap.global_offsets = dict(offsets)
        for rec in commit.serving:
            stored = self.serving.get(rec.user_id)
            if newer(stored[:2] if stored else None, (rec.event_ts, rec.sequence)):
                self.serving[rec.user_id] = (rec.event_ts, rec.sequence, rec.payload)
        self.commits += 1

    async def publish_trending(self, items: list[str]) -> None:
        self.trending = list(items)
