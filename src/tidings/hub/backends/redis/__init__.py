"""The Redis backend: several processes on one Redis behave as one hub.

``backend`` (:class:`RedisBackend`, composing the rest), ``scripts`` (a
channel's keys and one Lua script per operation, files in ``lua/``),
``pipeline`` (batched script calls, the one place redis errors are
translated), ``fanout`` (the Pub/Sub connection and exactly-once delivery)
and ``codec`` (what the scripts store and announce, read back). Only this
package imports ``redis``.
"""

from tidings.hub.backends.redis.backend import RedisBackend

__all__ = ["RedisBackend"]
