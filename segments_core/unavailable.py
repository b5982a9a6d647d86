"""Which failures of Redis mean "not now": the one classification of the service.

Redis, or the part of a Redis Cluster that holds a key, can be briefly unable
to answer: restarting or loading its data, running a long script, failing
over, migrating a slot, or simply unreachable. None of these is the caller's
fault nor a bug, and each passes: the API answers them with 503 and
``Retry-After`` (the framework's handlers and the hot path both ask
:func:`is_unavailable`), and the archiver backs off and tries again.

Anything else a Redis client raises (a script's error, a wrong type) is a bug
and stays a 500.
"""

from __future__ import annotations

from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

RETRY_AFTER_S = 1
"""What a 503 tells clients to wait: a failover takes a second or two."""

DETAIL = "storage unavailable, retry shortly"
"""The message of every such 503."""

NOT_NOW_CODES = frozenset(
    {
        "LOADING",  # a restarted node loading its data
        "BUSY",  # a script running past its time limit
        "MASTERDOWN",  # a replica that lost its master (replica-serve-stale-data no)
        "READONLY",  # a former master, now a replica, not yet known as such
        "CLUSTERDOWN",  # the cluster marked itself failed, or a slot is unserved
        "TRYAGAIN",  # a multi-key command on a slot being migrated
        "MOVED",  # redirections that outlived the client's redirect budget
        "ASK",
        "NOREPLICAS",  # min-replicas-to-write not met
    }
)
"""Error codes of Redis replies that mean "not now"."""

REDIS_CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    # redis-py's cluster errors of its own (no node reachable, a slot with no
    # node) do not derive from RedisError.
    RedisClusterException,
    OSError,
)
"""Everything a Redis client call can raise for reasons outside our code."""


def error_code(exc: BaseException) -> str | None:
    """The code of a Redis error reply (``TRYAGAIN``), also inside a script's error.

    Redis 7 passes the error of a ``redis.call`` inside a script on with its
    own code; Redis 6.2 wraps it (``ERR Error running script ... -READONLY
    ...``), so the code after a ``-`` counts too.
    """
    if not isinstance(exc, ResponseError):
        return None
    text = str(exc)
    # redis-py strips the code it recognised off the message and keeps it here
    status = getattr(exc, "status_code", None)
    candidates = [status if isinstance(status, str) else None, text.split(" ", 1)[0]]
    marker = text.find(" -")
    if marker != -1:
        candidates.append(text[marker + 2 :].split(" ", 1)[0])
    for code in candidates:
        if code in NOT_NOW_CODES:
            return code
    return next((c for c in candidates if c), None)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot answer right now (503), not a bug (500)."""
    if isinstance(
        exc,
        (
            RedisConnectionError,  # includes LOADING (BusyLoadingError), max clients
            RedisTimeoutError,
            ClusterDownError,  # includes MASTERDOWN
            TryAgainError,
            OSError,  # sockets; asyncio.TimeoutError is an OSError too
        ),
    ):
        return True
    if isinstance(exc, ClusterError):
        # "TTL exhausted.": redirections (ASK, MOVED, TRYAGAIN) went on past
        # redis-py's budget, which happens while a slot migrates.
        return True
    if isinstance(exc, RedisClusterException):
        # No node reachable ("Redis Cluster cannot be connected"), or a slot
        # not covered while the cluster reconfigures.
        return True
    return error_code(exc) in NOT_NOW_CODES
