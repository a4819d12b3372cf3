"""Redis key names for one (source, partition).

Every key of a partition carries the same hash tag, ``{<prefix>:<source>:<partition>}``, so in a
Redis Cluster the events stream, the cursor and the dead-letter stream live in one slot and one
Lua script may write all three atomically. See docs/redis-layout.md.
"""

from __future__ import annotations

import attrs

DEFAULT_PREFIX = "weir"

# ":" separates the parts of the tag; braces would end or nest the hash tag.
_FORBIDDEN_IN_PART = frozenset("{}:")
_FORBIDDEN_IN_PREFIX = frozenset("{}")


@attrs.frozen(slots=True, kw_only=True)
class PartitionKeys:
    """The three keys of one partition, in the order the persist script takes them.

    Attributes:
        events: stream of persisted events; entry id ``<position>-<sub>``.
        cursor: hash with ``position``, ``token``, ``updated_ms``, ``events``, ``dead``.
        dead: stream of dead letters (data that could not be parsed), auto ids.
    """

    events: str
    cursor: str
    dead: str

    def as_tuple(self) -> tuple[str, str, str]:
        return (self.events, self.cursor, self.dead)


def hash_tag(source: str, partition: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The ``{prefix:source:partition}`` hash tag shared by all keys of a partition.

    Raises:
        ValueError: a part is empty, has whitespace or control characters, or (for ``source``
            and ``partition``) contains ``{``, ``}`` or ``:``; the prefix may contain ``:``.
    """
    _check("prefix", prefix, _FORBIDDEN_IN_PREFIX)
    _check("source", source, _FORBIDDEN_IN_PART)
    _check("partition", partition, _FORBIDDEN_IN_PART)
    return f"{{{prefix}:{source}:{partition}}}"


def partition_keys(source: str, partition: str, *, prefix: str = DEFAULT_PREFIX) -> PartitionKeys:
    """The events, cursor and dead-letter keys of ``(source, partition)``.

    Raises:
        ValueError: see :func:`hash_tag`.
    """
    tag = hash_tag(source, partition, prefix=prefix)
    return PartitionKeys(events=f"{tag}:events", cursor=f"{tag}:cursor", dead=f"{tag}:dead")


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can be used in key names, else raise ValueError."""
    _check("prefix", prefix, _FORBIDDEN_IN_PREFIX)
    return prefix


def validate_name(what: str, value: str) -> str:
    """Return ``value`` if it can be a source or partition name, else raise ValueError."""
    _check(what, value, _FORBIDDEN_IN_PART)
    return value


def _check(what: str, value: str, forbidden: frozenset[str]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}: {value!r}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    bad = sorted({c for c in value if c in forbidden or c.isspace() or not c.isprintable()})
    if bad:
        reserved = "braces, ':'" if ":" in forbidden else "braces"
        raise ValueError(
            f"{what} {value!r} cannot be used in a Redis key: it contains "
            f"{' '.join(repr(c) for c in bad)} ({reserved} and whitespace are reserved by the key "
            f"layout)"
        )


def delivery_dead_key(source: str, partition: str, group: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The delivery dead-letter stream of consumer group ``group`` on a partition (docs/delivery.md):
    entries no target accepted. Same hash tag as the events stream, so moving an entry there and
    acknowledging it is one atomic MULTI even in a cluster.

    Raises:
        ValueError: see :func:`hash_tag` (``group`` follows the rules of a partition name).
    """
    _check("group", group, _FORBIDDEN_IN_PART)
    return f"{hash_tag(source, partition, prefix=prefix)}:undelivered:{group}"
