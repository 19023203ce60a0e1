"""Whole state partitions to each member of the ingest group: input partitions decoupled from state partitions.

The worker keeps one state per *state partition* (``KAIROS_PARTITIONS``, N). The input topics may have more
partitions, M = K x N: input partition ``p`` of every input topic belongs to state partition ``p % N``. Records are
keyed by shopper with Kafka's default partitioner, so a shopper's events land on input partition
``murmur2(user) % M`` and ``murmur2(user) % M % N == murmur2(user) % N`` (N divides M): the same state partition as
with M = N, whatever K is. Why more input partitions than states: on the embedded broker every fetch lists the
stored batches of each partition it reads, so spreading the same events over more partitions keeps each log short
(docs/performance.md); per-partition work in the worker (checkpoints, commits, discovery) stays with the N states.

A member must then own all K input partitions of a state partition, of every input topic, or two members would
update one state. Kafka's range assignor only guarantees that for K = 1; :func:`state_partition_assignor` makes an
assignor that splits the N state partitions into ranges over the members (sorted by id, the first ones taking one
more when N does not divide evenly) and gives each member every input partition of its states. With K = 1 that is
exactly the range assignment the worker used before.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = logging.getLogger(__name__)

ASSIGNOR_NAME = "kairos-state-partitions"


def state_ranges(n_states: int, members: list[str]) -> dict[str, list[int]]:
    """The state partitions of each member: contiguous ranges in member-id order, as Kafka's range assignor."""
    ordered = sorted(members)
    if not ordered:
        return {}
    each, extra = divmod(n_states, len(ordered))
    out: dict[str, list[int]] = {}
    start = 0
    for i, member in enumerate(ordered):
        length = each + (1 if i < extra else 0)
        out[member] = list(range(start, start + length))
        start += length
    return out


def assign_input_partitions(
    n_states: int, partitions_by_topic: Mapping[str, Iterable[int]], subscriptions: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, list[int]]]:
    """member -> topic -> input partitions. ``subscriptions``: member -> its topics. A topic whose partition count
    is not a multiple of ``n_states`` is still assigned (partition ``p`` with state ``p % n_states``), and the worker
    refuses to run on it (agents/topics_admin.py): the assignment itself never drops partitions."""
    members_by_topic: dict[str, list[str]] = collections.defaultdict(list)
    for member, topics in subscriptions.items():
        for topic in topics:
            members_by_topic[topic].append(member)
    assignment: dict[str, dict[str, list[int]]] = {member: {} for member in subscriptions}
    for topic, members in members_by_topic.items():
        partitions = sorted(partitions_by_topic.get(topic, ()))
        if not partitions:
            continue
        for member, states in state_ranges(n_states, members).items():
            owned = set(states)
            assignment[member][topic] = [p for p in partitions if p % n_states in owned]
    return assignment


def state_partition_assignor(n_states: int) -> type[AbstractPartitionAssignor]:
    """An aiokafka assignor class for ``n_states`` state partitions. Every member of a group must use the same
    count: each member's count travels in its metadata, and a member whose count differs from the leader's gets
    nothing (two counts would map one input partition to two different states), with an error in the leader's log."""
    if n_states < 1:
        raise ValueError(f"state partitions must be at least 1, not {n_states}")

    class StatePartitionAssignor(AbstractPartitionAssignor):
        name = ASSIGNOR_NAME
        version = 0
        states = n_states

        @classmethod
        def assign(
            cls, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
        ) -> dict[str, ConsumerProtocolMemberAssignment]:
            counts = {member: _states_of(meta) for member, meta in members.items()}
            odd = sorted(member for member, count in counts.items() if count != cls.states)
            if odd:
                log.error("members %s use another state partition count than this leader's %d (%s): they get no "
                          "partitions until KAIROS_PARTITIONS agrees", odd, cls.states, counts)  # fmt: skip
            subscriptions = {member: list(meta.subscription) for member, meta in members.items() if member not in odd}
            topics = {topic for subscribed in subscriptions.values() for topic in subscribed}
            partitions_by_topic = {}
            for topic in topics:
                partitions = cluster.partitions_for_topic(topic)
                if partitions is None:
                    log.warning("no partition metadata for topic %s", topic)
                    continue
                partitions_by_topic[topic] = partitions
            assignment = assign_input_partitions(cls.states, partitions_by_topic, subscriptions)
            return {
                member: ConsumerProtocolMemberAssignment(cls.version, sorted(assignment.get(member, {}).items()), b"")
                for member in members
            }

        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), str(cls.states).encode())

        @classmethod
        def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
            pass

    return StatePartitionAssignor


def assignment_strategies(n_states: int, input_counts: Iterable[int]) -> tuple[type[AbstractPartitionAssignor], ...]:
    """The ingest consumer's assignors, preferred first. With as many input partitions as states, Kafka's range
    assignor splits them exactly as :func:`state_partition_assignor` does, so it is offered second: a group that
    still has workers of a version that knew only range assignment agrees on it during a rolling upgrade instead of
    refusing the new workers. With more input partitions than states it is not offered (it would split a state's
    input partitions between workers)."""
    preferred = state_partition_assignor(n_states)
    if all(count == n_states for count in input_counts):
        return preferred, RangePartitionAssignor
    return (preferred,)


def _states_of(metadata: ConsumerProtocolMemberMetadata) -> int | None:
    try:
        return int(bytes(metadata.user_data or b"").decode())
    except ValueError:
        return None
