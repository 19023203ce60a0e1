"""Every Redis key Kairos reads or writes, defined in one place (docs/state.md is the storage spec).

Partition state keys share a ``{prefix:group:pN}`` hash tag so one partition's users, offsets and global
checkpoint can be written in one MULTI/EXEC even on Redis Cluster.

>>> RedisKeys("kairos", "g").user_state(3)
'kairos:state:{kairos:g:p3}:users'
>>> RedisKeys("kairos", "g").serving("u1")
'kairos:rec:u1'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str
    group: str

    def _partition(self, partition: int) -> str:
        return f"{self.prefix}:state:{{{self.prefix}:{self.group}:p{partition}}}"

    def user_state(self, partition: int) -> str:
        """Hash: user id -> serialized ``UserInterest``."""
        return f"{self._partition(partition)}:users"

    def user_activity(self, partition: int) -> str:
        """Sorted set: user id -> last event time, for expiring idle users that are not in any worker's memory."""
        return f"{self._partition(partition)}:activity"

    def offsets(self, partition: int) -> str:
        """Hash: input topic -> next offset to consume, committed with the user states."""
        return f"{self._partition(partition)}:offsets"

    def global_checkpoint(self, partition: int) -> str:
        """String: serialized global model + online ranker of the partition."""
        return f"{self._partition(partition)}:global"

    def global_offsets(self, partition: int) -> str:
        """Hash: input topic -> offset the global checkpoint covers (replay starts here after a restart)."""
        return f"{self._partition(partition)}:global-offsets"

    def serving(self, user_id: str) -> str:
        """Hash {ts, seq, rec}: the storefront's latest recommendation for a user (TTL'd)."""
        return f"{self.prefix}:rec:{user_id}"

    def copy(self, segment: str) -> str:
        """Hash item id -> generated copy for one interest segment (TTL'd)."""
        return f"{self.prefix}:copy:{segment}"

    def trending(self) -> str:
        """String: JSON list of trending item ids, the cold-start answer for unknown users."""
        return f"{self.prefix}:trending"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"
