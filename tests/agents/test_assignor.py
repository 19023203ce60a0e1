"""The ingest group's assignor: each member gets whole state partitions, with every input partition feeding them
(input partition p feeds state partition p % N). Pure logic; the group with a real broker is in test_faults.py."""

from __future__ import annotations

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from kairos.agents.assignor import (
    ASSIGNOR_NAME,
    assign_input_partitions,
    assignment_strategies,
    state_partition_assignor,
    state_ranges,
)


class _Cluster:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def partitions_for_topic(self, topic: str):
        return set(range(self.counts[topic])) if topic in self.counts else None


def test_states_split_in_ranges_like_kafkas_range_assignor():
    assert state_ranges(4, ["b", "a"]) == {"a": [0, 1], "b": [2, 3]}
    assert state_ranges(4, ["a", "b", "c"]) == {"a": [0, 1], "b": [2], "c": [3]}
    assert state_ranges(2, ["a", "b", "c"]) == {"a": [0], "b": [1], "c": []}
    assert state_ranges(3, []) == {}


def test_each_member_gets_every_input_partition_of_its_states_in_every_topic():
    subscriptions = {"m1": ["clicks", "purchases"], "m2": ["clicks", "purchases"]}
    got = assign_input_partitions(4, {"clicks": range(16), "purchases": range(16)}, subscriptions)
    assert got["m1"] == {"clicks": [0, 1, 4, 5, 8, 9, 12, 13], "purchases": [0, 1, 4, 5, 8, 9, 12, 13]}
    assert got["m2"] == {"clicks": [2, 3, 6, 7, 10, 11, 14, 15], "purchases": [2, 3, 6, 7, 10, 11, 14, 15]}
    # no input partition twice or never
    for topic in ("clicks", "purchases"):
        assert sorted(got["m1"][topic] + got["m2"][topic]) == list(range(16))


def test_as_many_input_partitions_as_states_is_the_range_assignment():
    got = assign_input_partitions(4, {"clicks": range(4)}, {"a": ["clicks"], "b": ["clicks"], "c": ["clicks"]})
    assert got == {"a": {"clicks": [0, 1]}, "b": {"clicks": [2]}, "c": {"clicks": [3]}}


def test_the_assignor_class_carries_its_state_count_and_leaves_out_members_that_disagree():
    assignor = state_partition_assignor(4)
    assert assignor.name == ASSIGNOR_NAME
    meta = assignor.metadata(["clicks"])
    assert meta.subscription == ["clicks"] and meta.user_data == b"4"
    odd = state_partition_assignor(2).metadata(["clicks"])
    members = {"a": meta, "b": odd, "c": ConsumerProtocolMemberMetadata(0, ["clicks"], b"4")}
    got = {member: dict(a.assignment) for member, a in assignor.assign(_Cluster({"clicks": 8}), members).items()}
    assert got["b"] == {}
    assert got["a"] == {"clicks": [0, 1, 4, 5]} and got["c"] == {"clicks": [2, 3, 6, 7]}


def test_range_assignment_is_offered_second_only_when_it_splits_the_same_way():
    """A rolling upgrade from workers that knew only range assignment: with one input partition per state the
    group can agree on range (the same split); with more it must not (a state's partitions would be split)."""
    same = assignment_strategies(4, [4, 4, 4])
    assert [s.name for s in same] == [ASSIGNOR_NAME, "range"] and same[1] is RangePartitionAssignor
    members = {"a": same[0].metadata(["clicks"]), "b": same[0].metadata(["clicks"])}
    ours = {m: dict(a.assignment) for m, a in same[0].assign(_Cluster({"clicks": 4}), members).items()}
    theirs = {m: dict(a.assignment) for m, a in RangePartitionAssignor.assign(_Cluster({"clicks": 4}), members).items()}
    assert ours == theirs
    assert [s.name for s in assignment_strategies(4, [16, 4, 4])] == [ASSIGNOR_NAME]
