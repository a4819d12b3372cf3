"""What a newly announced head means, before it is linked (sans-IO).

A ``newHeads`` push is a claim, not an order: a load-balanced provider's backends disagree and lag,
a node re-announces its recent heads after every subscribe, and a head can wait in the buffer
while weir learns the newer chain another way (a backfill). Two pure decisions, the second only
when the first needs the node's word:

1. :func:`first_look` (the window and the head alone): the head is already held (**repeat**), the
   tip's child (**extend**), a child of the tip whose number is not the tip's plus one
   (**implausible**: dead-lettered, never linked, so a forged number never becomes the cursor),
   far ahead (**far ahead**: :func:`judge_far` with the node's own head number decides whether it
   is implausible or a gap to backfill by ranges), or anything else (**ask**: what the node holds
   at the head's height, and at the tip's height when the head is not above the tip).
2. :func:`second_look` (with those answers):

   - a head above the tip that is not the node's block at its height is **stale**: skipped;
   - a head at or below the tip's height never moves weir back by itself. If the node's block at
     the tip's height is the tip, the head is the node repeating an ancestor (**repeat**), or one
     of a branch it abandoned (**stale**, when it holds another block at the head's height); if the
     node has no block there, it is behind weir (**behind**: lag, a lagging backend); only if the
     node holds *another* block there is it a reorg, and weir follows that block
     (**follow**, with ``header`` the node's block at the tip's height);
   - otherwise the head is **followed** (a gap filled by hash, or a reorg above the tip's height).

So a block the node still holds at its height is never retracted on the word of a head that does
not reach past it; a reorg to a shorter chain is retracted once the node's new chain holds another
block at the tip's height.

At start-up, :func:`judge_resume` and :func:`shorter_chain` judge the cursor's block against the
node's: resume, reorg (walk back from the node's block), wait for a node that is behind, or count
a block the node should have and does not (missing history, towards ``BlockLost``).
"""

from __future__ import annotations

import attrs

from weir.codecs.ethereum_logs import Header

REPEAT = "repeat"
EXTEND = "extend"
IMPLAUSIBLE = "implausible"
FAR_AHEAD = "far_ahead"
ASK = "ask"
STALE = "stale"
BEHIND = "behind"
FOLLOW = "follow"


@attrs.frozen(kw_only=True)
class Verdict:
    """A decision about a head.

    Attributes:
        kind: one of the module's constants.
        header: the block to link, for ``EXTEND`` and ``FOLLOW`` (for a head at or below the tip,
            the node's block at the tip's height, not the head).
        ask_tip: for ``ASK``: the node's block at the tip's height is needed too (the head does not
            reach past the tip).
    """

    kind: str
    header: Header | None = None
    ask_tip: bool = False


def first_look(tip: Header, known: bool, header: Header, *, gap_fetch: int) -> Verdict:
    """Judge ``header`` against the window's newest block ``tip`` (``known``: the window holds it).

    Args:
        gap_fetch: a head more than this many blocks past the tip is caught up to by ranges.
    """
    if known:
        return Verdict(kind=REPEAT)
    if header.parent_hash == tip.hash:
        if header.number != tip.number + 1:
            return Verdict(kind=IMPLAUSIBLE)
        return Verdict(kind=EXTEND, header=header)
    if header.number > tip.number + gap_fetch:
        return Verdict(kind=FAR_AHEAD)
    return Verdict(kind=ASK, ask_tip=header.number <= tip.number)


def judge_far(header: Header, node_head: int, *, max_ahead: int) -> Verdict:
    """A head more than ``gap_fetch`` blocks past the tip, against the node's own head number
    (``eth_blockNumber``): a head further than ``max_ahead`` blocks above what the node itself
    says it has is **implausible** (a forged or corrupt number: believed, it would make weir
    backfill towards a block that does not exist); otherwise a gap to backfill (**far ahead**)."""
    if header.number > node_head + max_ahead:
        return Verdict(kind=IMPLAUSIBLE)
    return Verdict(kind=FAR_AHEAD)


def second_look(tip: Header, header: Header, *, at_height: Header | None, at_tip: Header | None) -> Verdict:
    """Judge a head that :func:`first_look` answered ``ASK`` for, with the node's answers.

    Args:
        at_height: the node's block at ``header.number`` (None: it has none).
        at_tip: the node's block at ``tip.number`` (asked only when ``header`` does not reach past
            the tip; None: it has none).
    """
    if header.number <= tip.number:
        if at_tip is None:
            return Verdict(kind=BEHIND)
        if at_tip.hash != tip.hash:
            return Verdict(kind=FOLLOW, header=at_tip)
        if at_height is not None and at_height.hash != header.hash:
            return Verdict(kind=STALE)  # a block of a branch the node abandoned, announced late
        return Verdict(kind=REPEAT)
    if at_height is not None and at_height.hash != header.hash:
        return Verdict(kind=STALE)
    # No block at that height: a provider whose read view lags its newHeads. Not known to be
    # stale, so the head is followed (the walk back fetches by hash).
    return Verdict(kind=FOLLOW, header=header)


# -- resuming from the cursor -----------------------------------------------------------------------
#
# After a restart the cursor's block ("number:hash") is checked against the node before anything
# else, so a reorg while weir was down is retracted at once, even when it left the chain as long
# (or shorter) and no new head comes to reveal it. A node that is merely behind must not look like
# one: walking back from a lagging head would retract canonical blocks.

RESUME = "resume"  # the node holds the cursor's block: go on from it
REORG = "reorg"  # the node holds another block (``header``): walk back from it, retracting
MISSING = "missing"  # no block at the height although its head is past it: missing history (counts towards BlockLost)
WALK_CURSOR = "walk_cursor"  # fetch the cursor block's ancestor at the head's height (by hash), then shorter_chain()


def judge_resume(number: int, hash_: str, *, at_height: Header | None, head: Header | None, max_depth: int) -> Verdict:
    """Judge the cursor's block ``number:hash_`` by the node's block at that height (``at_height``)
    and, when it has none, its head (``head``; None: asked only then, or the node has no head)."""
    if at_height is not None:
        return Verdict(kind=RESUME) if at_height.hash == hash_ else Verdict(kind=REORG, header=at_height)
    if head is None:
        return Verdict(kind=ASK)  # the driver asks for the node's head, then judges again
    if head.number >= number:
        return Verdict(kind=MISSING)
    if number - head.number > max_depth:
        return Verdict(kind=BEHIND)  # further below than any reorg weir could retract: lag
    return Verdict(kind=WALK_CURSOR)


def shorter_chain(ancestor: Header | None, head: Header) -> Verdict:
    """The node has no block at the cursor's height; ``ancestor`` is the cursor block's ancestor at
    the node's head's height (None: the node does not serve the cursor's block or one of its
    ancestors: not imported yet, or pruned after a reorg, which only a longer chain will tell)."""
    if ancestor is None or ancestor.hash == head.hash:
        return Verdict(kind=BEHIND)  # its head is an ancestor of the cursor's block, or we cannot tell yet
    return Verdict(kind=REORG, header=head)  # another, shorter chain: walk back from its head
