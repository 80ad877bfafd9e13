"""Ids: time-ordered, unique across the processes writing one database, blocks consecutive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.domain.ids import SEQUENCE_BITS, IdGenerator
from server.domain.replicas_model import NODE_BITS, NODES

# (clock step in ms, may step back; block size)
STEPS = st.lists(st.tuples(st.integers(-5, 5), st.integers(1, 40)), min_size=1, max_size=300)


@given(STEPS, STEPS, st.integers(0, NODES - 1), st.integers(0, NODES - 1))
def test_two_nodes_never_hand_out_the_same_id(
    a_steps: list[tuple[int, int]], b_steps: list[tuple[int, int]], a_node: int, b_node: int
) -> None:
    if a_node == b_node:
        b_node = (a_node + 1) % NODES
    seen: set[int] = set()
    for node, steps in ((a_node, a_steps), (b_node, b_steps)):
        ids = IdGenerator(node=node)
        now = 1_800_000_000.0
        last = 0
        for step, count in steps:
            now += step / 1000
            first = ids.block(now, count)
            assert first > last  # strictly increasing, whatever the clock does
            block = set(range(first, first + count))
            assert (first >> (SEQUENCE_BITS - NODE_BITS)) & (NODES - 1) == node
            assert ((first + count - 1) >> (SEQUENCE_BITS - NODE_BITS)) & (NODES - 1) == node
            assert not block & seen
            seen |= block
            last = first + count - 1


def test_a_full_millisecond_moves_on_to_the_next() -> None:
    ids = IdGenerator(node=3)
    now = 1_800_000_000.0
    first = ids.block(now, 16_000)
    second = ids.block(now, 1_000)  # does not fit in this millisecond's 16,384
    assert second >> SEQUENCE_BITS == (first >> SEQUENCE_BITS) + 1
    assert IdGenerator.floor(now) <= first < second


def test_a_restart_continues_above_the_floor_another_node_left() -> None:
    other = IdGenerator(node=9)
    now = 1_800_000_000.0
    top = other.block(now, 5) + 4
    mine = IdGenerator(floor=top, node=2)
    assert mine.next(now) > top


def test_bad_nodes_and_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="node"):
        IdGenerator(node=NODES)
    with pytest.raises(ValueError, match="block"):
        IdGenerator().block(0.0, 0)


def test_many_ids_come_in_increasing_order_across_blocks() -> None:
    ids = IdGenerator(node=5)
    now = 1_800_000_000.0
    before = ids.next(now)
    many = ids.many(now, 40_000)  # more than one block (16,384) holds
    assert len(many) == len(set(many)) == 40_000
    assert many == sorted(many) and many[0] > before
    assert all((i >> (SEQUENCE_BITS - NODE_BITS)) & (NODES - 1) == 5 for i in many)
    assert ids.next(now) > many[-1]
    assert ids.many(now, 0) == []
