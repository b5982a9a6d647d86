"""`segments migrate`: create or upgrade the PostgreSQL schema.

Migrations are plain SQL files in ``archiver/migrations``, named
``NNNN_what.sql``, applied in the order of their number, each in its own
transaction together with its row in ``schema_migrations``; so a migration
is applied entirely or not at all, and running ``migrate`` again applies
only what is new. A session advisory lock lets several processes (two
archivers starting at once, ``segments dev``) call it concurrently.
"""

from __future__ import annotations

import re
from importlib import resources

import msgspec
import psycopg

_LOCK_KEY = 0x5E61_4D16
"""Advisory lock id held while migrating (any constant unique to this app)."""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class Migration(msgspec.Struct, frozen=True):
    version: str
    name: str
    sql: str


class MigrationError(RuntimeError):
    """The migrations folder is inconsistent (a misnamed or duplicated file)."""


def available() -> list[Migration]:
    """Every migration shipped with the package, in the order to apply them."""
    found: dict[str, Migration] = {}
    for entry in resources.files("archiver").joinpath("migrations").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_what.sql")
        version = match.group(1)
        if version in found:
            raise MigrationError(f"two migrations numbered {version}")
        found[version] = Migration(version, entry.name.removesuffix(".sql"), entry.read_text())
    return [found[v] for v in sorted(found)]


def migrate(database_url: str) -> list[str]:
    """Apply every migration not applied yet; return the names applied (may be empty)."""
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for migration in available():
                if migration.version in done:
                    continue
                with conn.transaction():
                    # No parameters: psycopg sends the file as one simple
                    # query, so it may hold many statements.
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied_now.append(migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def migrate_and_report(database_url: str) -> None:
    """``migrate``, saying on stdout what it applied (``segments migrate``, ``segments dev``)."""
    applied = migrate(database_url)
    for name in applied:
        print(f"applied migration {name}", flush=True)
    if not applied:
        print("database schema is up to date", flush=True)
