"""Start-up check: would the Redis we are given lose or evict the service's data?

Redis is the source of truth for memberships, and its streams hold history
not yet archived. Two settings decide whether that survives:

- persistence: the append-only file (``appendonly yes``, ``appendfsync
  everysec``: at most a second lost on a crash) or at least RDB snapshots
  (``save``: minutes lost). With neither, a restart loses everything.
- ``maxmemory-policy``: anything but ``noeviction`` lets Redis delete keys
  when memory is full, silently: memberships, catalogue, unarchived events.

:func:`durability_warning` reads them (``INFO``, and ``CONFIG GET save``,
which managed Redis often forbids: then it says it could not check) on every
node that holds data, and returns one line for the log, or None when all is
well.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError

SAFE_POLICY = "noeviction"
ADVICE = "set appendonly yes (appendfsync everysec) and maxmemory-policy noeviction"


async def _nodes(redis: Any) -> list[tuple[str, Any]]:
    """(name, client-like target) of every node that holds data."""
    if isinstance(redis, RedisCluster):
        return [(f"{n.host}:{n.port}", n) for n in redis.get_primaries()]
    return [("", None)]


async def _call(redis: Any, node: Any, *args: str) -> Any:
    if node is None:
        return await redis.execute_command(*args)
    return await redis.execute_command(*args, target_nodes=node)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_value(reply: Any, name: str) -> str:
    """The value of ``CONFIG GET name`` (a dict or a flat list, bytes or str)."""
    if isinstance(reply, dict):
        items = {_text(k): _text(v) for k, v in reply.items()}
    else:
        flat = [_text(x) for x in reply]
        items = dict(zip(flat[::2], flat[1::2], strict=True))
    return items.get(name, "")


async def _node_findings(redis: Any, node: Any) -> list[str]:
    found: list[str] = []
    persistence = await _call(redis, node, "INFO", "persistence")
    memory = await _call(redis, node, "INFO", "memory")
    aof = str(persistence.get("aof_enabled", "0")) == "1"
    if not aof:
        try:
            save = _config_value(await _call(redis, node, "CONFIG", "GET", "save"), "save")
        except ResponseError as exc:  # CONFIG renamed away or not permitted
            reason = _text(exc).split("\n", 1)[0][:80]
            found.append(
                f"appendonly is off and RDB snapshots could not be checked (CONFIG GET: {reason})"
            )
        else:
            if not save.strip():
                found.append('no persistence (appendonly no, save ""): a restart loses all data')
    policy = _text(memory.get("maxmemory_policy", "")) or "unknown"
    if policy != SAFE_POLICY:
        found.append(f"maxmemory-policy {policy} can evict the service's keys")
    return found


async def durability_warning(redis: Any) -> str | None:
    """One line saying what is unsafe (or could not be checked), or None."""
    findings: list[str] = []
    for name, node in await _nodes(redis):
        try:
            found = await _node_findings(redis, node)
        except ResponseError as exc:  # INFO itself refused
            found = [f"could not check persistence and eviction ({_text(exc)[:80]})"]
        findings += [f"{name}: {f}" if name else f for f in found]
    if not findings:
        return None
    return f"Redis may lose data: {'; '.join(findings)}. To keep it, {ADVICE} (README: Operations)."
