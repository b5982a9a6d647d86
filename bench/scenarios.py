"""The bench's scenarios: what each one runs, and the order they may be named in.

Load scenarios are wrk runs (one Lua script each, in ``bench/lua/``);
``percent``, ``percent-100``, ``hotpath`` and ``csv`` are measurements the
bench makes itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.schedule import CEILING


@dataclass(frozen=True, slots=True)
class LoadScenario:
    name: str
    script: str
    """File name in bench/lua/ without ``.lua``."""
    description: str
    zipf: bool = False
    """Draw users from the Zipf table instead of uniformly."""
    items_per_request: int = 1
    args: dict[str, int] = field(default_factory=dict)


BATCH = 100

LOAD: dict[str, LoadScenario] = {
    s.name: s
    for s in (
        LoadScenario(CEILING, "ceiling", "GET /healthz: constant JSON, same app and server"),
        LoadScenario("lookup", "lookup", "GET /api/v1/users/{id}/segments, uniform users"),
        LoadScenario(
            "lookup-zipf", "lookup", "the same, users Zipf-skewed (exponent 1)", zipf=True
        ),
        LoadScenario(
            "lookup-batch",
            "lookup_batch",
            f"POST /api/v1/users/lookup with {BATCH} uniform users",
            items_per_request=BATCH,
            args={"batch": BATCH},
        ),
        LoadScenario(
            "change", "change", "POST /api/v1/users/{id}/segments: 2 adds (ttl), 1 remove"
        ),
        LoadScenario("mixed", "mixed", "90% lookup, 10% change"),
    )
}

MEASUREMENTS = {
    "percent": "create and delete a 10% segment over --percent-users known users;"
    " slow log and probes",
    "percent-100": "the same with a 100% segment (not by default: a minute more)",
    "hotpath": "lookups through the service's hot path in the bench's process (no HTTP)",
    "csv": "stream this month's CSV history report; rows/s and API memory",
}

DEFAULT = [
    *("lookup", "lookup-zipf", "lookup-batch", "change", "mixed"),
    *("percent", "hotpath", "csv"),
]
ALL = [*DEFAULT, "percent-100"]


def parse(spec: str) -> list[str]:
    """Names from ``a,b,c`` (or ``all``), validated, in the order given, without repeats."""
    if spec.strip() == "all":
        return list(ALL)
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip()
        if not name or name == CEILING:
            continue  # ceiling always runs, interleaved
        if name not in LOAD and name not in MEASUREMENTS:
            known = ", ".join([*(n for n in LOAD if n != CEILING), *MEASUREMENTS])
            raise ValueError(f"unknown scenario {name!r}; known: {known}")
        if name not in names:
            names.append(name)
    return names
