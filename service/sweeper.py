"""Background upkeep in every API process: expiry and crash repair.

Several processes may run it at once: each script call is atomic and every
step is idempotent, so the only cost of running it twice is work.
"""

from __future__ import annotations

import asyncio
import logging
import time

from segments_core.unavailable import REDIS_CLIENT_ERRORS
from service import metrics
from service.store import Store

REPAIR_INTERVAL_S = 30.0
"""How often unfinished deletions and rollouts of crashed processes are resumed."""

log = logging.getLogger("segments.sweeper")


async def run(store: Store, interval_s: float) -> None:
    next_repair = 0.0
    while True:
        try:
            if time.monotonic() >= next_repair:
                await store.repair()
                next_repair = time.monotonic() + REPAIR_INTERVAL_S
            expired = await store.sweep()
            if expired:
                metrics.SWEEPER_EXPIRED.inc(expired)
                log.debug("expired %d memberships", expired)
        except REDIS_CLIENT_ERRORS as exc:
            metrics.redis_error(exc)
            log.warning("sweeper: Redis unavailable (%s); retrying", exc)
        except Exception:
            log.exception("sweeper step failed; retrying")
        await asyncio.sleep(interval_s)
