"""The chain follower (sans-IO): random chains with reorgs, gaps and restarts.

The property: whatever the chain does, the logs emitted minus the logs retracted (counting only
what a "Redis" that keeps a prefix of the steps holds, as after a crash) are exactly the logs of the
final canonical chain up to the confirmation depth, minus its malformed logs; sequence numbers only
increase; a retraction always removes something that is there (never a malformed log); each
malformed log of a settled canonical block is dead-lettered exactly once, with its block's step.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain_world import World, follow, fresh, net_logs
from weir.codecs.ethereum_chain import APPLY, RETRACT, ChainFollower, ReorgTooDeep, Step, parse_token


operations = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.integers(0, 3), st.booleans(), st.integers(0, 2)),
        st.tuples(st.just("reorg"), st.integers(1, 10), st.integers(0, 3), st.booleans(), st.integers(0, 2)),
        st.tuples(st.just("restart"), st.integers(0, 100)),
        st.tuples(st.just("repeat"), st.integers(0, 8)),  # the node announces an earlier head again
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(ops=operations, confirmations=st.sampled_from([0, 0, 1, 3]))
def test_emitted_minus_retracted_is_the_final_canonical_chain(ops, confirmations):
    world = World()
    follower, persisted = fresh(world, confirmations)
    unpersisted: list[Step] = []
    for op in ops:
        if op[0] == "extend":
            world.extend(op[1], op[3])
            deliver = op[2]
        elif op[0] == "reorg":
            world.reorg(op[1], op[1] + op[2] % 2, 2, op[4])  # same length or one longer
            deliver = op[3]
        elif op[0] == "repeat":
            # Linking alone (no head verdict first): an ancestor of the tip, even one the window
            # no longer holds (after a restart), is found known on the walk back and changes nothing.
            tip = follower.tip
            repeated = world.canonical[max(0, len(world.canonical) - 1 - op[1])]
            if tip is not None and repeated.number <= tip.number and world.ancestor(tip, repeated.number) == repeated:
                before = (follower.tip, follower.seq)
                assert follow(follower, world, repeated) == [], f"re-announced block {repeated.number} emitted steps"
                assert (follower.tip, follower.seq) == before
            continue
        else:
            # A crash: only a prefix of what was emitted reached Redis, with its cursor.
            keep = op[1] * len(unpersisted) // 100
            persisted += unpersisted[:keep]
            unpersisted = []
            if persisted:
                last = persisted[-1]
                number, hash_ = parse_token(last.token)
                tip = world.by_hash[hash_]
                assert tip.number == number
                follower = ChainFollower.resume(seq=last.seq, tip=tip, confirmations=confirmations)
            else:
                follower, unpersisted = fresh(world, confirmations)
            continue
        if deliver:  # otherwise the head is missed: the next one arrives after a gap
            unpersisted += follow(follower, world, world.head)
    unpersisted += follow(follower, world, world.head)
    steps = persisted + unpersisted
    assert [s.seq for s in steps] == sorted(set(s.seq for s in steps)), "sequence numbers must strictly increase"
    settled = [h for h in world.canonical if h.number <= world.head.number - confirmations]
    expected = Counter(log.identity for h in settled for log in world.logs[h.hash])
    assert net_logs(steps) == expected
    dead = Counter(letter.payload for s in steps for letter in s.dead)
    assert all(s.kind == APPLY for s in steps if s.dead), "dead letters come with the block's APPLY step only"
    assert max(dead.values(), default=1) == 1, "a malformed log dead-lettered twice"
    settled_bad = {letter.payload for h in settled for letter in world.bad[h.hash]}
    assert settled_bad <= set(dead), "a malformed log of a settled canonical block was never dead-lettered"
    if confirmations == 0:
        assert follower.emitted_tip == world.head


def test_reorg_retracts_orphans_newest_first_then_applies_the_new_branch():
    world = World()
    follower, steps = fresh(world, 0)
    for _ in range(5):
        world.extend(1)
        steps += follow(follower, world, world.head)
    old = world.canonical[3:]
    world.reorg(3, 4, 1)
    new = follow(follower, world, world.head)
    assert [(s.kind, s.header.hash) for s in new] == [
        *((RETRACT, h.hash) for h in reversed(old)),
        *((APPLY, h.hash) for h in world.canonical[3:]),
    ]
    # after retracting block n, the cursor is its parent
    assert new[0].token == f"{old[-1].number - 1}:{old[-1].parent_hash}"
    assert new[-1].token == world.head.token
    assert follower.reorgs == 1


def test_confirmation_depth_delays_emission_and_flags_deep_reorgs():
    world = World()
    follower, steps = fresh(world, 2)
    assert steps == []
    for _ in range(4):
        world.extend(1)
        steps += follow(follower, world, world.head)
    assert [s.header.number for s in steps] == [0, 1, 2]
    world.reorg(1, 1, 1)  # shallower than the depth: nothing emitted is touched
    shallow = follow(follower, world, world.head)
    assert [s.kind for s in shallow] == [] and follower.deep_reorgs == 0
    world.reorg(3, 4, 1)  # deeper: block 2 was emitted, and is retracted loudly
    deep = follow(follower, world, world.head)
    assert deep[0].kind == RETRACT and deep[0].deep and deep[0].header.number == 2
    assert follower.deep_reorgs == 1


def test_a_reorg_deeper_than_the_window_is_refused():
    world = World()
    follower = ChainFollower(max_depth=4)
    follower.apply([world.block(world.canonical[0].hash)])
    for _ in range(10):
        world.extend(0)
        follow(follower, world, world.head)
    world.reorg(8, 8, 0)
    with pytest.raises(ReorgTooDeep, match="no common ancestor within 4 blocks"):
        follow(follower, world, world.head)


def test_branch_that_does_not_link_is_rejected():
    world = World()
    world.extend(0)
    world.extend(0)
    follower = ChainFollower()
    with pytest.raises(ValueError, match="do not link"):
        follower.link([world.block(world.canonical[2].hash), world.block(world.canonical[1].hash)])


def test_bad_cursor_token_names_itself():
    with pytest.raises(ValueError, match="cursor token 'abc'"):
        parse_token("abc")
