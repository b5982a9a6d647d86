"""Loads the Lua scripts of ``service/lua/`` and calls them by SHA.

The scripts are package data of ``service`` (read with ``importlib.resources``),
so a wheel installed anywhere carries and finds them.

A script's file is named ``verbNoun-<number of keys>.lua``; the loader takes
the key count from the name and checks every call against it. Lines
``--- @include "name"`` are replaced by ``service/lua/includes/name.lua``, so helpers
shared by several scripts are written once. A Redis that lost its script
cache (restart, failover, ``SCRIPT FLUSH``) is given the script again on the
next call.

Time: every script reads the Redis server's clock (``TIME``) itself; a
caller puts ``NOW`` where a script takes its "now" argument, and the
production build sends an empty one. ``load_scripts(clock=...)`` makes the
test build instead: its scripts take the time the clock gives at the moment
of each call (``TEST_CLOCK`` is on in their source, so they have another
SHA). Only tests pass a clock; the production build refuses an explicit
time, so nothing in production can set the service's time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from segments_core.unavailable import REDIS_CLIENT_ERRORS
from service import metrics
from service.errors import ScriptArgumentError

LUA_DIR: Traversable = resources.files("service") / "lua"
_INCLUDE = re.compile(r'^--- @include "([A-Za-z0-9_]+)"$', re.MULTILINE)
_NAME = re.compile(r"^([A-Za-z]+)-(\d+)\.lua$")
_CLOCK_OFF = "\nlocal TEST_CLOCK = false\n"
_CLOCK_ON = "\nlocal TEST_CLOCK = true\n"


class _Now:
    """The placeholder for a script's "now" argument (``NOW``)."""

    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()


def _expand(source: str) -> str:
    includes = LUA_DIR / "includes"  # the shared helpers, whichever directory is loaded
    return _INCLUDE.sub(lambda m: (includes / f"{m[1]}.lua").read_text(), source)


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    num_keys: int
    source: str
    sha: str
    clock: Callable[[], int] | None = None
    """The test build's clock; None in production."""

    def time_arg(self) -> str:
        """The "now" argument: empty (the script reads TIME), or the test clock's time."""
        return "" if self.clock is None else str(self.clock())

    async def __call__(self, redis: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if len(keys) != self.num_keys:
            raise ValueError(f"{self.name} takes {self.num_keys} keys, got {len(keys)}")
        metrics.REQUESTS.script_calls(self.name)
        # Read at the call, so a test clock moved while the call waited counts.
        args = [self.time_arg() if a is NOW else a for a in args]
        try:
            try:
                return await redis.execute_command(
                    "EVALSHA", self.sha, self.num_keys, *keys, *args
                )
            except NoScriptError:
                await redis.script_load(self.source)
                return await redis.execute_command(
                    "EVALSHA", self.sha, self.num_keys, *keys, *args
                )
        except ResponseError as exc:
            # Redis 7 passes the message on as it is; 6.2 wraps it in its own words.
            message = str(exc)
            if "BADARG " in message:
                metrics.SCRIPT_ERRORS.labels(self.name, "BADARG").inc()
                detail = message[message.index("BADARG ") + 7 :]
                raise ScriptArgumentError(f"{self.name}: BADARG {detail}") from None
            metrics.redis_error(exc, self.name)
            raise
        except REDIS_CLIENT_ERRORS as exc:
            metrics.redis_error(exc, self.name)
            raise


def load_scripts(
    directory: Traversable = LUA_DIR, *, clock: Callable[[], int] | None = None
) -> dict[str, LuaScript]:
    """Every script of the directory by name (``changeMemberships``).

    With ``clock``, the test build (module docstring): tests only."""
    scripts: dict[str, LuaScript] = {}
    files = (f for f in directory.iterdir() if f.is_file() and f.name.endswith(".lua"))
    for path in sorted(files, key=lambda f: f.name):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"{path.name}: expected a name like verbNoun-3.lua")
        source = _expand(path.read_text())
        if clock is not None:
            source = source.replace(_CLOCK_OFF, _CLOCK_ON)
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[match[1]] = LuaScript(match[1], int(match[2]), source, sha, clock)
    return scripts
