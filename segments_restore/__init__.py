"""Redis rebuilt from history (``segments restore``), and checked against it (``segments verify``).

Sits above the API (``service``) and the archiver (``archiver``), like the CLI:
it reads the history those two write (PostgreSQL, plus what the Redis streams
hold and the archiver has not stored yet) and writes the state the Lua scripts
would have left. Nothing imports it except ``segments_cli``.

- ``catalogue``: segments as history tells them, one incarnation per id;
- ``replay``: one user's events -> the user hash fields (pure);
- ``history``: reading the events in order, from PostgreSQL and the streams;
- ``shards``: the deployment's number of shards, when Redis lost it;
- ``redis_state``: marker, lock, wipe and bounded writes into Redis;
- ``restore`` / ``verify``: the two commands.
"""
