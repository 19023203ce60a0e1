"""The one module that talks to Redis: partition state + offsets (atomic per batch) and the serving keys.

Storage format: docs/state.md. Serving writes go through a Lua script so "an older event never overwrites a
newer one" holds even with several writers (e.g. a worker catching up after a rebalance).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

import orjson
import redis.asyncio as aioredis

from kairos.engine.store import Commit, PartitionSnapshot
from kairos.schemas.keys import RedisKeys

# KEYS[1] serving hash; ARGV: event_ts, sequence, payload, ttl_s. Returns 1 when written, 0 when stale.
_SERVE_IF_NEWER = """
local cur = redis.call('HMGET', KEYS[1], 'ts', 'seq')
if cur[1] then
  local ts, seq = tonumber(cur[1]), tonumber(cur[2])
  local new_ts, new_seq = tonumber(ARGV[1]), tonumber(ARGV[2])
  if ts > new_ts or (ts == new_ts and seq >= new_seq) then return 0 end
end
redis.call('HSET', KEYS[1], 'ts', ARGV[1], 'seq', ARGV[2], 'rec', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisStateStore:
    def __init__(self, client: aioredis.Redis, keys: RedisKeys, serving_ttl_s: int) -> None:
        self.client = client
        self.keys = keys
        self.serving_ttl_s = serving_ttl_s
        self.last_write_s = 0.0
        self.stale_writes = 0

    @classmethod
    def from_url(cls, url: str, keys: RedisKeys, serving_ttl_s: int) -> "RedisStateStore":
        client = aioredis.Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=2.0, health_check_interval=10)
        return cls(client, keys, serving_ttl_s)

    async def load(self, partition: int, *, with_users: bool = True) -> PartitionSnapshot:
        """The partition's offsets and global checkpoint, and every user state when ``with_users`` (workers
        read users on demand instead: ``load_users``)."""
        k = self.keys
        async with self.client.pipeline(transaction=True) as pipe:
            if with_users:
                pipe.hgetall(k.user_state(partition))
            pipe.hgetall(k.offsets(partition))
            pipe.get(k.global_checkpoint(partition))
            pipe.hgetall(k.global_offsets(partition))
            found = await pipe.execute()
        users, offsets, blob, global_offsets = found if with_users else ({}, *found)
        return PartitionSnapshot(
            users={u.decode(): v for u, v in users.items()},
            offsets={t.decode(): int(o) for t, o in offsets.items()},
            global_blob=blob,
            global_offsets={t.decode(): int(o) for t, o in global_offsets.items()},
        )

    async def load_users(self, partition: int, user_ids: Iterable[str]) -> dict[str, bytes]:
        """The stored states of ``user_ids`` (one HMGET); users never seen are absent from the answer."""
        ids = list(user_ids)
        if not ids:
            return {}
        blobs = await self.client.hmget(self.keys.user_state(partition), ids)
        return {uid: blob for uid, blob in zip(ids, blobs) if blob is not None}

    async def expire_users(self, partition: int, idle_before: float, keep: Collection[str], limit: int = 1000) -> list[str]:
        """Delete up to ``limit`` users whose last event is older than ``idle_before``, except ``keep`` (users in
        the owner's memory, which expires those itself). Returns the ids deleted."""
        k = self.keys
        idle = await self.client.zrangebyscore(k.user_activity(partition), "-inf", f"({idle_before!r}", start=0, num=limit)
        ids = [raw.decode() for raw in idle if raw.decode() not in keep]
        if ids:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hdel(k.user_state(partition), *ids)
                pipe.zrem(k.user_activity(partition), *ids)
                await pipe.execute()
        return ids

    async def commit(self, commit: Commit) -> None:
        """One MULTI/EXEC: states, deletions, offsets, serving records and the optional global checkpoint."""
        k, p = self.keys, commit.partition
        started = time.perf_counter()
        async with self.client.pipeline(transaction=True) as pipe:
            if commit.users:
                pipe.hset(k.user_state(p), mapping=commit.users)
            if commit.activity:
                pipe.zadd(k.user_activity(p), dict(commit.activity))
            if commit.deleted:
                pipe.hdel(k.user_state(p), *commit.deleted)
                pipe.zrem(k.user_activity(p), *commit.deleted)
            if commit.offsets:
                pipe.hset(k.offsets(p), mapping=commit.offsets)
            if commit.global_checkpoint is not None:
                blob, offsets = commit.global_checkpoint
                pipe.set(k.global_checkpoint(p), blob)
                if offsets:
                    pipe.hset(k.global_offsets(p), mapping=offsets)
            # EVAL with the script's text, not a registered script's EVALSHA: a pipeline holding one asks Redis
            # SCRIPT EXISTS before every transaction, a second round trip per commit (Redis caches the compiled
            # script by its hash either way).
            for rec in commit.serving:
                pipe.eval(_SERVE_IF_NEWER, 1, k.serving(rec.user_id), repr(rec.event_ts), rec.sequence, rec.payload,
                          self.serving_ttl_s)  # fmt: skip
            results = await pipe.execute()
        self.stale_writes += sum(1 for r in results[len(results) - len(commit.serving) :] if r == 0)
        self.last_write_s = time.perf_counter() - started

    async def save_copies(self, copies: list[tuple[str, str, str]]) -> None:
        """Generated copy (item, segment, text), one hash per segment, for the API and for cold workers."""
        async with self.client.pipeline(transaction=False) as pipe:
            for item_id, segment, text in copies:
                pipe.hset(self.keys.copy(segment), item_id, text)
                pipe.expire(self.keys.copy(segment), self.serving_ttl_s)
            await pipe.execute()

    async def publish_trending(self, items: list[str]) -> None:
        await self.client.set(self.keys.trending(), orjson.dumps(items), ex=self.serving_ttl_s)

    async def serving_record(self, user_id: str) -> dict | None:
        raw = await self.client.hgetall(self.keys.serving(user_id))
        if not raw:
            return None
        return {"ts": float(raw[b"ts"]), "seq": int(raw[b"seq"]), "rec": orjson.loads(raw[b"rec"])}

    async def close(self) -> None:
        await self.client.aclose()


class ServingReader:
    """The storefront API's read path: one round trip per answer, short timeouts (a slow Redis must turn into a
    fast fallback, not a slow page). Reads the raw JSON bytes so the API can slice them without re-validating.
    """

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    @classmethod
    def from_url(cls, url: str, keys: RedisKeys, timeout_s: float = 0.25, max_connections: int = 64) -> "ServingReader":
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=max_connections
        )
        return cls(client, keys)

    async def recommendation(self, user_id: str) -> bytes | None:
        """The serialized ``Recommendation`` last written for the user, or None."""
        return await self.client.hget(self.keys.serving(user_id), "rec")

    async def recommendation_and_trending(self, user_id: str) -> tuple[bytes | None, bytes | None]:
        """Both in one round trip: the cold-start answer costs nothing extra to fetch."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.serving(user_id), "rec")
            pipe.get(self.keys.trending())
            rec, trending = await pipe.execute()
        return rec, trending

    async def trending(self) -> list[str]:
        raw = await self.client.get(self.keys.trending())
        return orjson.loads(raw) if raw else []

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def close(self) -> None:
        await self.client.aclose()
