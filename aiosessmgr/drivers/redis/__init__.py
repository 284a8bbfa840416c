"""Redis driver: redis.asyncio on one node, Sentinel or Cluster, with auto-pipelining.

Public API of redis-py only (``Pipeline``, ``execute_command``, ``Lock``); modules:
``client`` builds the client from options (url, connection, Sentinel, Cluster),
``batching`` sends one loop turn's commands as one pipeline, ``lock`` is the session
lock on redis-py's ``Lock`` and the queue of this process's waiters, ``index`` the
user index, ``replies`` checks every reply and words failures without session ids,
``driver`` the :class:`RedisDriver` itself.

Records are plain string keys, ``prefix + "{" + id + "}"``: the braces are a hash tag,
so every key of one session (the record, its lock) lives in one Cluster hash slot.
Redis expires records itself: ``write`` is ``SET key value EX ttl``, a read is
``GETEX key EX ttl`` (read and extend in one round trip), and ``gc()`` has nothing to
do. ``compare_and_set`` is a Lua script run with ``EVALSHA`` (one round trip; on
``NOSCRIPT`` it is sent once more with ``EVAL``, which also caches it on that node).
``read_many`` is one round trip, auto-pipelining or not: ``MGET`` of up to
``MGET_CHUNK`` keys per command on a single node, a pipeline of GETs on a Cluster (one
per node).

The user index (``index_user_session`` / ``user_session_index`` /
``unindex_user_sessions``) is one hash per user, ``{handle: session id}``, under
``prefix + "user:{" + tag + "}"``, the tag being the user id percent-encoded (every
character but letters, digits and ``_.-~@+``; the empty id is ``%``): never empty, no
brace, one tag per user id. The braces make it the key's hash tag, so each user's index
is one key in one Cluster slot and no command touches two slots; with ``user:`` before
the brace it is never a session's or a lock's key of the same prefix (a second driver
on the same database whose prefix is this one plus ``user:`` could share keys with it:
give drivers prefixes that do not extend each other). Each operation is one Lua script
(add: ``HSET``, then ``PEXPIRE`` to the larger of the ``PTTL`` and the ttl; remove: delete
a field only if it still names the given id; read: ``HGETALL``), sent as
``compare_and_set`` is. Redis expires an index once its last deadline passed; entries
whose record is gone meanwhile stay until the manager, listing the user's sessions,
finds them stale and removes them (``unindex_user_sessions``), so ``gc()`` still has
nothing to do. A key of another type under an index's name reads as an empty index, is
never written, and is logged (the tag abbreviated: user ids are personal data).

Session locks (``acquire_lock`` / ``release_lock``, behind ``session.lock()``) are
redis-py's ``Lock`` on the key ``prefix + "{" + id + "}:lock"`` in the record's slot:
``SET key token NX PX ttl``, and released by Lock's Lua script, which deletes the key
only if it still holds the holder's random token. Waiters of one id in one process
queue (first come, first served) and only the first polls Redis, with jittered sleeps
growing from LOCK_POLL_MIN to LOCK_POLL_MAX seconds until its ``wait`` runs out; the
next one's turn starts when the holder releases (see ``lock``). Redis expires the lock
after ``ttl`` whatever happens to its holder: a holder that dies frees it then, and one
still working after ``ttl`` no longer excludes anyone, in its process or another.

A key of another type (a hash, a list...) under a record's or a lock's name is one bad
key, not an outage: reads answer "no record" and log a WARNING (the id abbreviated),
the compare-and-set answers "not written", a lock is never taken over it, and none of
them changes it (an explicit ``destroy`` deletes it). Other failures are a
``DriverError``, and every call is bounded by the driver's overall timeout.

A reply no Redis would give (an integer or an array where a string belongs, a string
where 0 or 1 belongs, a line redis-py's parser cannot read) is a ``DriverError`` too,
never another exception, and is never converted blindly (see ``replies``). It may be
another command's reply (a stray extra reply puts its connection one behind), so the
driver then disconnects every connection of the client, idle or in use, through the
pool's (or each Cluster node's) public ``disconnect()``: no connection that may be out
of step is used again. redis-py's pure-Python parser reserves nothing for a length a
reply announces (``$200000000``), but builds an announced array (``*200000000``) element
by element, and tiny elements cost 8 to 30 times their bytes in memory; the bound is
that times what it can read in ``socket_timeout`` (which redis-py applies to the whole
reply), and redis-py offers no public way to cap a reply's size. With hiredis
installed, redis-py's hiredis parser reserves 8 bytes per element an array header
announces before any arrives, which redis-py offers no public way to limit or avoid. No
DriverError, nor any exception chained to it, shows a whole session id: keys contain
the id, and redis-py's messages may quote keys.

Clients the driver builds speak RESP2 unless the options ask for 3: redis-py 8's pool
checks a pooled connection for unread data before handing it out on RESP2 only.
Connections, their checks and retries are redis-py's: a pooled connection that died
(Redis restarted, ``CLIENT KILL``) is replaced when the pool hands it out, or the
command is retried once on a fresh connection (the clients the driver builds; a
client of the application's own keeps its settings). Every command the driver sends
is safe to run twice (see ``client.build_client``).

Auto-pipelining (``pipelining: true``, the default): every command issued while the
event loop runs one turn - typically the reads of all requests that arrived together -
goes out as one redis-py pipeline (``transaction=False``), and each reply (or error
reply) is handed back to the caller that issued it. Replies are the same, with the same
types, as without pipelining (``pipelining: false`` sends each command on its own).

Configuration (the options of a ``"driver": "redis"`` entry)::

    {"driver": "redis", "lifetime": 120, "url": "redis://127.0.0.1:6379/0"}
    {"driver": "redis", "connection": {"host": "10.0.0.5", "port": 6379, "db": 2}}
    {"driver": "redis", "url": "redis://10.0.0.5:7000", "cluster": True}
    {"driver": "redis", "sentinel": {"hosts": ["10.0.0.7:26379"], "service_name": "mymaster"}}
    {"driver": "redis", "client": existing_redis_asyncio_client}   # not closed by us
"""

from __future__ import annotations

# the "X as X" names are importable from here as before, outside __all__
from .client import DEFAULT_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT
from .client import DEFAULT_SOCKET_TIMEOUT as DEFAULT_SOCKET_TIMEOUT
from .driver import CAS_SCRIPT as CAS_SCRIPT
from .driver import CAS_SHA as CAS_SHA
from .driver import DEFAULT_PREFIX as DEFAULT_PREFIX
from .driver import LOCK_POLL_MAX, LOCK_POLL_MIN, RedisDriver
from .driver import RELEASE_SCRIPT as RELEASE_SCRIPT
from .driver import RELEASE_SHA as RELEASE_SHA
from .index import INDEX_SHA as INDEX_SHA
from .index import READ_SHA as READ_SHA
from .index import UNINDEX_SHA as UNINDEX_SHA

__all__ = ["LOCK_POLL_MAX", "LOCK_POLL_MIN", "RedisDriver"]
