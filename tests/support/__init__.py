"""Helpers of the test suite (never imported by the runtime packages)."""

from segments_core.keys import Keyspace

KEYSPACE = Keyspace()
"""The layout every test deployment has: the default number of shards."""
SHARD_KEYS = KEYSPACE.shard_keys
for_user = KEYSPACE.for_user
shard_of = KEYSPACE.shard_of
history_streams = KEYSPACE.history_streams
