"""The base layer of Segments: what the API (``service``) and the archiver
(``archiver``) both need, and nothing of either.

Key names and the user -> shard layout (``keys``), the Redis connection
(``redis_client``), history streams and the archiver's consumer-group state
(``streams``), configuration errors and declarations (``config``), the domain's
input rules (``rules``) and time (``clock``). It imports neither package above it.
"""
