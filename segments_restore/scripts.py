"""The restore's own Lua scripts (``segments_restore/lua``), called by SHA.

Two bounded batch scripts, one to write and one to read a few hundred users
of one shard per call: a pipeline of one command per user costs the client
(encoding every argument, one reply object each) ten times what it costs
Redis, and a restore writes hundreds of thousands of users. Each call
touches one shard's keys only (one hash tag, so one Cluster slot) and runs
for about a millisecond. A Redis that lost its script cache gets the script
again on the next call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    num_keys: int
    source: str
    sha: str

    async def __call__(self, redis: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        assert len(keys) == self.num_keys, f"{self.name} takes {self.num_keys} keys"
        try:
            return await redis.execute_command("EVALSHA", self.sha, self.num_keys, *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.execute_command("EVALSHA", self.sha, self.num_keys, *keys, *args)


def _load(name: str, num_keys: int) -> Script:
    source = (resources.files("segments_restore") / "lua" / f"{name}-{num_keys}.lua").read_text()
    return Script(name, num_keys, source, hashlib.sha1(source.encode()).hexdigest())


RESTORE_USERS = _load("restoreUsers", 3)
READ_USERS = _load("readUsers", 2)
