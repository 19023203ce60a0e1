"""State owned by one input partition: its users, its global model, and the offsets that state reflects.

Users are keyed to partitions by the Kafka key (the user id), so a partition's state is only ever touched by the
one worker that owns the partition: no locks, no cross-worker merges. ``dirty`` users are written at the next
commit; idle users expire (least recently active first) and are deleted from the store in the same commit.

Memory is bounded: at most ``max_resident_users`` user states stay in memory. Once committed, the least recently
active beyond that are dropped from memory only (the store keeps them); the worker reads a returning user back
(``missing`` / ``adopt``) before it applies the user's events, so eviction never loses or forks a state. A user's
stored state also carries what the selector keeps per user (the frequency-cap history, ``Selector.user_state``):
written with the user, given back with them, dropped from memory with them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

import orjson

from kairos.engine.checkpoint import CheckpointBuild
from kairos.engine.config import EngineConfig
from kairos.engine.global_model import GlobalModel
from kairos.engine.selection import Selector
from kairos.engine.state import UserInterest
from kairos.engine.store import Commit, PartitionSnapshot, ServingRecord


class PartitionState:
    def __init__(self, partition: int, config: EngineConfig, selector: Selector) -> None:
        self.partition = partition
        self.config = config
        self.selector = selector
        self.users: OrderedDict[str, UserInterest] = OrderedDict()
        #: Next offset to read per input topic; these offsets are what the user states reflect.
        self.offsets: dict[str, int] = {}
        #: Offsets the last global checkpoint reflects; between these and ``offsets`` events are replayed into
        #: the global model only after a restart.
        self.global_offsets: dict[str, int] = {}
        #: The user checkpoint this state was restored from: records below it are replayed into the global model
        #: only (the users already contain them).
        self.replay_until: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.deleted: set[str] = set()
        #: Newest event time applied to this partition: its stream clock (idle expiry, trending).
        self.latest_ts = 0.0
        #: Serving records not yet written (kept across failed commits so nothing is lost while Redis is away).
        self.pending_serving: dict[str, ServingRecord] = {}

    def user(self, user_id: str) -> UserInterest:
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = UserInterest.new(user_id, self.config)
            self.deleted.discard(user_id)
        else:
            self.users.move_to_end(user_id)
        return user

    def missing(self, user_ids: Iterable[str]) -> list[str]:
        """The ids in ``user_ids`` whose state is not in memory (to be read from the store). A user expired here
        whose deletion is not committed yet is not read back: they start afresh, as expiry means."""
        users, deleted = self.users, self.deleted
        return [uid for uid in user_ids if uid not in users and uid not in deleted]

    def adopt(self, blobs: Mapping[str, bytes]) -> None:
        """Take user states read back from the store (only for users not in memory: memory is newer)."""
        for user_id, blob in blobs.items():
            if user_id not in self.users:
                self.users[user_id] = self._load_user(user_id, orjson.loads(blob))

    def _load_user(self, user_id: str, data: dict) -> UserInterest:
        """A stored user: their interest state, and their entries of the selector's per-user state (frequency
        caps) given back to the selector."""
        self.selector.load_user_state(user_id, data)
        return UserInterest.from_state(user_id, data, self.config)

    def _stored(self, user: UserInterest) -> bytes:
        state = user.to_state()
        state.update(self.selector.user_state(user.user_id, self.latest_ts))
        return orjson.dumps(state)

    def evict_resident(self) -> int:
        """Drop the least recently active *committed* users beyond ``max_resident_users`` from memory; dirty
        ones stay until they are written. Returns how many were dropped."""
        excess = len(self.users) - self.config.max_resident_users
        if excess <= 0:
            return 0
        victims = []
        for user_id in self.users:  # oldest activity first
            if user_id not in self.dirty:
                victims.append(user_id)
                if len(victims) == excess:
                    break
        for user_id in victims:
            del self.users[user_id]
            self.selector.forget_user(user_id)
        return len(victims)

    def mark_dirty(self, user_id: str) -> None:
        self.dirty.add(user_id)
        self.latest_ts = max(self.latest_ts, self.users[user_id].last_ts)

    def expire_idle(self, now: float) -> int:
        """Forget users idle for longer than the expiry; returns how many were dropped."""
        dropped = 0
        while self.users:
            user_id, user = next(iter(self.users.items()))
            if not user.is_idle(now):
                break
            del self.users[user_id]
            self.selector.forget_user(user_id)
            self.dirty.discard(user_id)
            self.deleted.add(user_id)
            dropped += 1
        return dropped

    def build_commit(self, with_global_checkpoint: bool) -> Commit:
        """Everything changed since the last successful commit, as one atomic unit."""
        written = [self.users[uid] for uid in self.dirty if uid in self.users]
        users = {user.user_id: self._stored(user) for user in written}
        checkpoint = (self.global_blob(), dict(self.offsets)) if with_global_checkpoint else None
        return Commit(
            partition=self.partition,
            users=users,
            deleted=list(self.deleted),
            offsets=dict(self.offsets),
            serving=list(self.pending_serving.values()),
            global_checkpoint=checkpoint,
            activity={user.user_id: user.last_ts for user in written},
            versions={user.user_id: user.version for user in written},
        )

    def committed(self, commit: Commit) -> None:
        """Forget what ``commit`` persisted (called only after the store confirmed it). A user whose state moved
        on after the commit was built stays dirty: the next commit writes the newer state."""
        users, versions = self.users, commit.versions
        for user_id in commit.users:
            user = users.get(user_id)
            if user is None or user_id not in versions or user.version == versions[user_id]:
                self.dirty.discard(user_id)
        self.deleted.difference_update(commit.deleted)
        for rec in commit.serving:
            if self.pending_serving.get(rec.user_id) is rec:
                del self.pending_serving[rec.user_id]
        if commit.global_checkpoint is not None:
            self.global_offsets = dict(commit.global_checkpoint[1])

    @property
    def has_pending(self) -> bool:
        return bool(self.dirty or self.deleted or self.pending_serving)

    def global_blob(self) -> bytes:
        selector = self.selector
        return orjson.dumps(
            {
                "model": selector.model.to_state(),
                "ranker": selector.online.to_state(),
                "selection": selector.to_state(),
                "clock": self.latest_ts,
            }
        )

    def begin_global_checkpoint(self) -> CheckpointBuild:
        """:meth:`global_blob` as of now, built a slice at a time while the state moves on (engine/checkpoint.py)."""
        selector = self.selector
        return CheckpointBuild(selector.model, selector.online.to_state(), selector.to_state(discovery_in_pieces=True),
                               self.latest_ts, selector.recommender.discovery)  # fmt: skip

    @classmethod
    def restore(
        cls, partition: int, config: EngineConfig, snapshot: PartitionSnapshot, make_selector: Callable[[], Selector]
    ) -> "PartitionState":
        state = cls(partition, config, make_selector())
        data: dict = {}
        if snapshot.global_blob:
            data = orjson.loads(snapshot.global_blob)
            state.selector.recommender.model = GlobalModel.from_state(data["model"], config)
            state.selector.online.load_state(data["ranker"])
            state.selector.load_state(data["selection"])
        loaded = [state._load_user(uid, orjson.loads(blob)) for uid, blob in snapshot.users.items()]
        for user in sorted(loaded, key=lambda u: u.last_ts):  # LRU order = activity order
            state.users[user.user_id] = user
        state.latest_ts = max([data.get("clock", 0.0), *(user.last_ts for user in loaded)])
        state.offsets = dict(snapshot.offsets)
        state.replay_until = dict(snapshot.offsets)
        state.global_offsets = dict(snapshot.global_offsets)
        return state

    def resume_offsets(self) -> dict[str, int]:
        """Where to start reading each topic: the older of the two checkpoints."""
        topics = set(self.offsets) | set(self.global_offsets)
        return {t: min(self.offsets.get(t, 0), self.global_offsets.get(t, 0)) for t in topics}
