"""What a new head means (weir.codecs.ethereum_heads + the follower), against generated chains.

A world grows a chain with forks; load-balanced backends behind one URL each see the world as it
was when they last caught up (a lagging backend is a snapshot); any backend announces any of its
earlier heads again at any time (as providers do after a subscribe); weir restarts at any point
with only the persisted cursor. The driver below is the actor's live loop
(``weir.actors.ethereum._follow_head`` and ``_backfill``) with lookups in place of calls. The
properties:

- the stream, after applying retractions, holds the final canonical chain's logs, each once;
- stream positions strictly increase, and no block is skipped (each applied block is the child of
  the block before it, each retraction removes the newest block);
- a block is retracted only on the word of the backend that answered: never a block of its chain;
  while the world has no reorg at all, nothing is ever retracted, whatever is re-announced;
- a head the follower already holds, or an ancestor of its tip confirmed by the node, changes
  nothing (no step, same tip, same position);
- a forged head (a child of the tip whose number does not follow it, or one far above the node's
  own head) changes nothing either: it is never linked, so its number never becomes the cursor.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from chain_world import Unavailable, World, fresh, link, net_logs
from weir.codecs import ethereum_heads as heads
from weir.codecs.ethereum_chain import APPLY, RETRACT, Block, ChainFollower, Step, parse_token
from weir.codecs.ethereum_logs import Header

GAP_FETCH = 3
HEAD_AHEAD_LIMIT = 20
RANGE = 4  # blocks per backfill range


class Backend:
    """One node behind the URL: the world's chain as of its last catch-up."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.catch_up()

    def catch_up(self) -> None:
        self.chain = list(self.world.canonical)
        self.seen = set(self.world.by_hash)  # blocks it has imported (side blocks are kept by hash)

    def at(self, number: int) -> Header | None:
        return self.chain[number] if number < len(self.chain) else None

    def block(self, hash_: str) -> Block | None:
        return self.world.block(hash_) if hash_ in self.seen else None

    def header(self, hash_: str) -> Header | None:
        return self.world.by_hash[hash_] if hash_ in self.seen else None

    def on_chain(self, hash_: str) -> bool:
        header = self.world.by_hash[hash_]
        return self.at(header.number) == header


class Driver:
    """weir's live loop for one chain, against one backend per announcement."""

    def __init__(self, world: World, follower: ChainFollower) -> None:
        self.world = world
        self.follower = follower
        self.steps: list[Step] = []

    def _link(self, backend: Backend, branch: list[Block]) -> None:
        steps = link(self.follower, branch, backend.block, backend.header)
        for step in steps:
            if step.kind == RETRACT:
                assert not backend.on_chain(step.header.hash), (
                    f"retracted block {step.header.number} which the answering node holds on its chain")
        self.steps += steps

    def backfill(self, backend: Backend, target: int) -> None:
        """``_backfill``: ranges by number from the tip to ``target``."""
        while (tip := self.follower.tip).number < target:
            blocks = [backend.at(n) for n in range(tip.number + 1, min(target, tip.number + RANGE) + 1)]
            if any(b is None for b in blocks):
                return
            self._link(backend, [self.world.block(b.hash) for b in blocks])

    def head(self, backend: Backend, header: Header) -> None:
        """``_follow_head``."""
        follower = self.follower
        for _ in range(2):
            tip = follower.tip
            verdict = heads.first_look(tip, follower.knows(header.hash), header, gap_fetch=GAP_FETCH)
            if verdict.kind == heads.FAR_AHEAD:
                verdict = heads.judge_far(header, len(backend.chain) - 1, max_ahead=HEAD_AHEAD_LIMIT)
            if verdict.kind != heads.FAR_AHEAD:
                break
            self.backfill(backend, header.number - 1)
        else:
            verdict = heads.Verdict(kind=heads.ASK)
        if verdict.kind == heads.IMPLAUSIBLE:
            return  # dead-lettered, never linked
        if verdict.kind == heads.ASK:
            at_tip = backend.at(tip.number) if verdict.ask_tip else None
            verdict = heads.second_look(tip, header, at_height=backend.at(header.number), at_tip=at_tip)
        if verdict.kind in (heads.REPEAT, heads.BEHIND, heads.STALE):
            return
        self._link(backend, [self.world.block(verdict.header.hash)])

    @classmethod
    def restarted(cls, world: World, backend: Backend, persisted: list[Step], confirmations: int) -> Driver | None:
        """``_start``: the cursor's block judged against ``backend``; None: the node is behind (wait)."""
        number, hash_ = parse_token(persisted[-1].token)
        cursor_block = world.by_hash[hash_]
        verdict = heads.judge_resume(number, hash_, at_height=backend.at(number), head=None, max_depth=64)
        if verdict.kind == heads.ASK:
            head = backend.chain[-1]
            verdict = heads.judge_resume(number, hash_, at_height=None, head=head, max_depth=64)
            assert verdict.kind != heads.MISSING, "a backend's chain has no holes"
            if verdict.kind == heads.WALK_CURSOR:
                verdict = heads.shorter_chain(world.ancestor(cursor_block, head.number), head)
            if verdict.kind == heads.BEHIND:
                return None
        driver = cls(world, ChainFollower.resume(seq=persisted[-1].seq, tip=cursor_block, confirmations=confirmations))
        if verdict.kind == heads.REORG:
            driver._link(backend, [world.block(verdict.header.hash)])
        else:
            assert verdict.kind == heads.RESUME
        return driver

    def session(self, backend: Backend, header: Header) -> None:
        """A reconnect: backfill to the node's head, then the head; a block the node does not
        serve ends the session (the actor reconnects; the follower is left consistent)."""
        try:
            self.backfill(backend, len(backend.chain) - 1)
            self.head(backend, header)
        except Unavailable:
            pass


operations = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.integers(0, 3)),
        st.tuples(st.just("reorg"), st.integers(1, 5), st.integers(-1, 2)),  # the new branch: one shorter to two longer
        st.tuples(st.just("catch_up"), st.integers(0, 2)),  # that backend sees the world as it is now
        st.tuples(st.just("announce"), st.integers(0, 2), st.integers(0, 6)),  # backend, how far back
        st.tuples(st.just("restart"), st.integers(0, 100)),
        # a lying node: a child of weir's tip with a number that does not follow it, or a head far
        # above the node's own head
        st.tuples(st.just("forge"), st.sampled_from([0, 2, 1 << 60]), st.booleans()),
    ),
    max_size=50,
)


def check_no_skips(steps: list[Step]) -> None:
    tip: str | None = None  # the hash of the newest block the stream holds
    for step in steps:
        if step.kind == APPLY:
            assert tip is None or step.header.parent_hash == tip, f"block {step.header.number} applied on top of {tip}"
            tip = step.header.hash
        else:
            assert step.header.hash == tip, f"retracted block {step.header.number}, not the newest"
            tip = step.header.parent_hash


@settings(max_examples=300, deadline=None)
@given(ops=operations, confirmations=st.sampled_from([0, 0, 2]))
def test_heads_from_lagging_backends_and_repeats_never_retract_what_the_node_holds(ops, confirmations):
    world = World()
    backends = [Backend(world) for _ in range(3)]
    follower, persisted = fresh(world, confirmations)
    driver = Driver(world, follower)
    reorged = False
    for op in ops:
        if op[0] == "extend":
            world.extend(op[1])
            backends[0].catch_up()  # backend 0 is always up to date; 1 and 2 lag until told
        elif op[0] == "reorg":
            world.reorg(op[1], max(1, op[1] + op[2]), 2)
            backends[0].catch_up()
            reorged = True
        elif op[0] == "catch_up":
            backends[op[1]].catch_up()
        elif op[0] == "announce":
            backend = backends[op[1]]
            header = backend.chain[max(0, len(backend.chain) - 1 - op[2])]
            before = (driver.follower.tip, driver.follower.seq, len(driver.steps))
            tip = driver.follower.tip
            repeat = header.number <= tip.number and world.ancestor(tip, header.number) == header and backend.at(tip.number) == tip
            if repeat:
                driver.head(backend, header)  # no session: it must not even need the node's blocks by hash
                assert (driver.follower.tip, driver.follower.seq, len(driver.steps)) == before, \
                    f"re-announced block {header.number} changed the follower"
            else:
                driver.session(backend, header)
        elif op[0] == "forge":
            tip = driver.follower.tip
            if op[2]:
                forged = Header(number=tip.number + 1 + HEAD_AHEAD_LIMIT + len(world.canonical) + op[1],
                                hash="0x" + "f" * 64, parent_hash="0x" + "e" * 64)
            else:
                forged = Header(number=tip.number + (op[1] or -1), hash="0x" + "f" * 64, parent_hash=tip.hash)
            before = (driver.follower.tip, driver.follower.seq, len(driver.steps))
            driver.head(backends[0], forged)
            assert (driver.follower.tip, driver.follower.seq, len(driver.steps)) == before, "a forged head moved weir"
        else:
            # A crash: only a prefix of what was emitted reached Redis, with its cursor.
            keep = op[1] * len(driver.steps) // 100
            persisted += driver.steps[:keep]
            if persisted:
                # the start check goes to the up-to-date backend; one behind the cursor is waited for
                driver = Driver.restarted(world, backends[0], persisted, confirmations) or driver_after_wait(world, persisted, confirmations)
            else:
                follower, steps = fresh(world, confirmations)
                driver = Driver(world, follower)
                driver.steps = steps
    # The network moves on: a reorg to a shorter chain is retracted once the node's chain holds
    # another block at weir's tip height (a head below the tip never moves weir back on its own).
    while world.head.number <= driver.follower.tip.number:
        world.extend(1)
    for backend in backends:
        backend.catch_up()
    driver.session(backends[0], world.head)
    steps = persisted + driver.steps
    assert [s.seq for s in steps] == sorted(set(s.seq for s in steps)), "stream positions must strictly increase"
    check_no_skips(steps)
    if not reorged:
        assert not any(s.kind == RETRACT for s in steps), "a retraction on a chain that never reorganised"
    settled = [h for h in world.canonical if h.number <= world.head.number - confirmations]
    assert net_logs(steps) == Counter(log.identity for h in settled for log in world.logs[h.hash])


def driver_after_wait(world: World, persisted: list[Step], confirmations: int) -> Driver:
    """The node was behind at the start check: weir waits; by the next session it is up to date."""
    driver = Driver.restarted(world, Backend(world), persisted, confirmations)
    assert driver is not None
    return driver


def following(world: World, blocks: int, n_logs: int) -> tuple[Driver, list[Step]]:
    """A driver that followed ``blocks`` new blocks of ``n_logs`` logs each, and every step it emitted."""
    follower, steps = fresh(world, 0)
    driver = Driver(world, follower)
    for _ in range(blocks):
        world.extend(n_logs)
        driver.head(Backend(world), world.head)
    return driver, steps + driver.steps


def restarted_after(world: World, steps: list[Step]) -> ChainFollower:
    _, hash_ = parse_token(steps[-1].token)
    return ChainFollower.resume(seq=steps[-1].seq, tip=world.by_hash[hash_])


def test_the_issue_9_restart_two_blocks_re_announced_after_subscribe_retract_nothing():
    """The defect of issue 9: after a restart the node re-announced the two blocks at and below
    the cursor; weir retracted both and emitted their logs again."""
    world = World()
    _, steps = following(world, 2, 3)
    driver = Driver(world, restarted_after(world, steps))
    node = Backend(world)
    for header in world.canonical[-2:]:
        driver.session(node, header)
    assert driver.steps == []


def test_after_a_restart_an_old_head_from_a_node_that_replaced_the_tip_follows_its_block_at_the_tip():
    world = World()
    _, steps = following(world, 4, 1)
    orphan = world.head
    driver = Driver(world, restarted_after(world, steps))  # the window: the tip alone
    world.reorg(1, 1, 1)  # a sibling of the tip replaces it while weir is down
    driver.head(Backend(world), world.canonical[-3])  # an older head, announced again
    assert [(s.kind, s.header) for s in driver.steps] == [(RETRACT, orphan), (APPLY, world.head)]
    # a head the window holds is a repeat without a question to the node
    assert heads.first_look(world.head, True, world.head, gap_fetch=GAP_FETCH).kind == heads.REPEAT


def test_a_lagging_backend_announcing_old_heads_is_behind_not_a_reorg():
    world = World()
    lagging = Backend(world)  # it saw genesis only
    driver, _ = following(world, 5, 1)
    tip, seq = driver.follower.tip, driver.follower.seq
    genesis = lagging.chain[-1]
    assert heads.first_look(tip, driver.follower.knows(genesis.hash), genesis, gap_fetch=GAP_FETCH).kind == heads.REPEAT
    header = world.canonical[2]
    assert heads.second_look(tip, header, at_height=header, at_tip=None).kind == heads.BEHIND
    driver.session(lagging, world.canonical[0])
    assert (driver.follower.tip, driver.follower.seq) == (tip, seq)


def test_first_and_second_look_name_each_case():
    a = Header(number=10, hash="0x" + "a" * 64, parent_hash="0x" + "9" * 64)
    child = Header(number=11, hash="0x" + "b" * 64, parent_hash=a.hash)
    other = Header(number=11, hash="0x" + "c" * 64, parent_hash="0x" + "d" * 64)
    far = Header(number=20, hash="0x" + "e" * 64, parent_hash="0x" + "f" * 64)
    assert heads.first_look(a, True, a, gap_fetch=3).kind == heads.REPEAT
    assert heads.first_look(a, False, child, gap_fetch=3) == heads.Verdict(kind=heads.EXTEND, header=child)
    assert heads.first_look(a, False, far, gap_fetch=3).kind == heads.FAR_AHEAD
    assert heads.first_look(a, False, other, gap_fetch=3) == heads.Verdict(kind=heads.ASK, ask_tip=False)
    assert heads.second_look(a, other, at_height=child, at_tip=None).kind == heads.STALE
    assert heads.second_look(a, other, at_height=None, at_tip=None) == heads.Verdict(kind=heads.FOLLOW, header=other)
    sibling = Header(number=10, hash="0x" + "1" * 64, parent_hash=a.parent_hash)
    assert heads.second_look(a, sibling, at_height=sibling, at_tip=sibling) == heads.Verdict(kind=heads.FOLLOW, header=sibling)
    assert heads.second_look(a, sibling, at_height=a, at_tip=a).kind == heads.STALE


def test_the_cursor_block_at_start_is_resumed_reorged_missing_or_waited_for():
    cursor = Header(number=100, hash="0x" + "11" * 32, parent_hash="0x" + "10" * 32)
    other = Header(number=100, hash="0x" + "22" * 32, parent_hash="0x" + "10" * 32)

    def head(number: int, byte: str = "ab") -> Header:
        return Header(number=number, hash="0x" + byte * 32, parent_hash="0x" + "cd" * 32)

    def judge(at_height, head_):
        return heads.judge_resume(100, cursor.hash, at_height=at_height, head=head_, max_depth=64)

    assert judge(cursor, None).kind == heads.RESUME
    assert judge(other, None) == heads.Verdict(kind=heads.REORG, header=other)
    assert judge(None, None).kind == heads.ASK
    # no block at the height while the head is past it: missing history (counts towards BlockLost), not lag
    assert judge(None, head(120)).kind == heads.MISSING
    assert judge(None, head(10)).kind == heads.BEHIND  # further below than any retractable reorg: lag
    assert judge(None, head(90)).kind == heads.WALK_CURSOR
    ninety = head(90)
    assert heads.shorter_chain(ninety, ninety).kind == heads.BEHIND  # its head is the cursor's ancestor
    assert heads.shorter_chain(None, ninety).kind == heads.BEHIND  # cannot tell yet
    assert heads.shorter_chain(head(90, "ee"), ninety) == heads.Verdict(kind=heads.REORG, header=ninety)
