"""Client construction for the Redis driver: url, connection, Sentinel or Cluster.

Turns the plain options of a ``"driver": "redis"`` entry into a redis.asyncio client,
without any network I/O (connections open lazily), and decides the driver's overall
timeout. Knows nothing of sessions; the driver itself lives in ``driver.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import redis.utils
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ...errors import ConfigError
from ...keys import check_keys

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_PROTOCOL", "DEFAULT_SOCKET_TIMEOUT", "OPTIONS",
           "Built", "RedisClient", "build_client", "check_client", "protocol_of"]

#: seconds to wait for a reply before the command fails
DEFAULT_SOCKET_TIMEOUT: Final = 3.0
#: seconds to wait for a TCP (or TLS, or unix socket) connection to be established
DEFAULT_CONNECT_TIMEOUT: Final = 3.0

#: every option of a redis driver entry (besides ``driver`` and ``lifetime``)
OPTIONS: Final = ("client", "cluster", "connect_timeout", "connection", "pipelining", "prefix",
                  "sentinel", "socket_timeout", "url")
_CONNECTION_KEYS: Final = ("db", "host", "password", "port", "protocol", "ssl", "username")
#: the RESP version of the clients built here, unless the options ask for another
DEFAULT_PROTOCOL: Final = 2
_SENTINEL_KEYS: Final = ("hosts", "password", "service_name")

RedisClient = Redis | RedisCluster


class Built(NamedTuple):
    """A client built from options, what else the driver must close, and its timeout."""

    client: RedisClient
    #: True if the driver created the client (and closes it); False for ``client``
    owns_client: bool
    #: the Sentinel manager behind a Sentinel client (closed with it), else None
    sentinel: Sentinel | None
    #: seconds: the bound on every driver call, retries included
    timeout: float


def build_client(opts: Mapping[str, Any]) -> Built:
    """The client the options describe; ConfigError for anything malformed.

    Retries of the clients built here (a client passed in keeps its own settings): a
    single node or Sentinel master retries a command once on a fresh connection when
    its connection failed (typically one pooled before Redis restarted), never after a
    timeout; a cluster retries once after re-reading the topology (redis-py before 6
    does that up to its ``cluster_error_retry_attempts``, 3). Every command the driver
    sends may run twice: reads, SET EX and DEL are idempotent, a compare-and-set or
    lock release that ran already answers "no" (the session then finds its own
    version), and a lock SET NX refused by our own earlier attempt is recognised by
    its token. The driver's overall timeout (connect + socket timeout, doubled and
    padded on a cluster for its retry) bounds every call whatever the retries do.

    Protocol: the clients built here speak RESP2 (:data:`DEFAULT_PROTOCOL`) unless the
    url (``?protocol=3``) or ``connection.protocol`` asks for 3. redis-py 8's pool checks
    a pooled connection for unread data before handing it out ("Connection has data",
    then it reconnects) on RESP2 only: on RESP3 it skips the check, as it expects
    maintenance notifications, so a connection put out of step by a stray reply would
    stay so. The driver also drops every pooled connection after a reply that shows a
    connection out of step (see ``RedisDriver``), on either protocol.
    """
    socket_timeout = _seconds("socket_timeout", opts.get("socket_timeout",
                                                         DEFAULT_SOCKET_TIMEOUT))
    connect_timeout = _seconds("connect_timeout", opts.get("connect_timeout",
                                                           DEFAULT_CONNECT_TIMEOUT))
    cluster = opts.get("cluster", False)
    if not isinstance(cluster, bool):
        raise ConfigError(f"cluster must be true or false, got {cluster!r}")
    sources = [key for key in ("client", "url", "sentinel") if key in opts]
    if len(sources) > 1 or ("connection" in opts and ("client" in opts or "url" in opts)):
        given = [key for key in ("client", "url", "connection", "sentinel") if key in opts]
        raise ConfigError(
            f"the redis driver takes one of 'url', 'connection', 'client' or 'sentinel' "
            f"(sentinel may be combined with 'connection' for db/password); got "
            f"{', '.join(given)}"
        )
    timeout = connect_timeout + socket_timeout
    # a Cluster call may retry once after refreshing the topology: twice the bound, +0.5 s
    if cluster or isinstance(opts.get("client"), RedisCluster):
        timeout = 2 * timeout + 0.5
    if "client" in opts:
        if any(key in opts for key in ("socket_timeout", "connect_timeout", "cluster")):
            raise ConfigError("with 'client', configure timeouts and cluster mode on the "
                              "client itself; the driver only adds its overall timeout")
        client = opts["client"]
        check_client(client)
        return Built(client, False, None, timeout)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        # a url's ?protocol=3 overrides this (redis-py's from_url lets the url win)
        "protocol": DEFAULT_PROTOCOL,
    }
    if cluster:
        common["retry"] = Retry(NoBackoff(), 1)
    else:
        # the Retry's errors are what redis-py 6+ retries; redis-py 5 retries only the
        # errors listed in retry_on_error (and accepts the Retry for how often)
        common["retry"] = Retry(NoBackoff(), 1, (RedisConnectionError,))
        common["retry_on_error"] = [RedisConnectionError]
    sentinel = None
    built: RedisClient
    try:
        if "sentinel" in opts:
            if cluster:
                raise ConfigError("cluster and sentinel cannot be combined")
            sentinel, built = _sentinel_client(opts["sentinel"], opts.get("connection", {}),
                                               common)
        elif "url" in opts:
            url = opts["url"]
            if not isinstance(url, str):
                raise ConfigError(f"url must be a string, got {type(url).__name__}")
            built = (RedisCluster.from_url(url, **common) if cluster
                     else Redis.from_url(url, **common))
        else:
            conn = _connection(opts.get("connection", {}))
            common["protocol"] = conn.pop("protocol", DEFAULT_PROTOCOL)
            if cluster:
                if conn.pop("db", 0):
                    raise ConfigError("connection.db must be 0 with cluster: true")
                built = RedisCluster(**conn, **common)
            else:
                built = Redis(**conn, **common)
    except (ValueError, TypeError, RedisError, RedisClusterException) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"invalid redis connection settings: {exc}") from exc
    return Built(built, True, sentinel, timeout)


def check_client(client: Any) -> None:
    """ConfigError unless *client* is a redis.asyncio client that returns bytes."""
    if not isinstance(client, (Redis, RedisCluster)):
        raise ConfigError(
            "the redis driver needs a redis.asyncio.Redis or redis.asyncio.RedisCluster "
            f"client, got {type(client).__module__}.{type(client).__name__}"
        )
    if client.get_encoder().decode_responses:
        raise ConfigError(
            "the redis client must be created with decode_responses=False: "
            "session records are binary"
        )


def protocol_of(client: RedisClient) -> int:
    """The RESP version *client* speaks: its ``protocol``, else redis-py's default (2
    before redis-py 8, 3 from 8 on)."""
    kwargs = (client.get_connection_kwargs() if isinstance(client, RedisCluster)
              else client.connection_pool.connection_kwargs)
    value = kwargs.get("protocol")
    if value is None:
        value = getattr(redis.utils, "DEFAULT_RESP_VERSION", 2)
    return 3 if value in (3, "3") else 2


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _connection(data: Any) -> dict[str, Any]:
    """Redis() keyword arguments from the ``connection`` mapping (defaults: localhost:6379)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"connection must be a mapping, got {type(data).__name__}")
    check_keys("connection.", data, _CONNECTION_KEYS)
    conn = {"host": "127.0.0.1", "port": 6379, "db": 0, **data}
    if not isinstance(conn["host"], str) or not conn["host"]:
        raise ConfigError(f"connection.host must be a host name, got {conn['host']!r}")
    for name in ("port", "db"):
        if isinstance(conn[name], bool) or not isinstance(conn[name], int) or conn[name] < 0:
            raise ConfigError(f"connection.{name} must be an integer, got {conn[name]!r}")
    if not isinstance(conn.get("ssl", False), bool):
        raise ConfigError(f"connection.ssl must be true or false, got {conn['ssl']!r}")
    if conn.get("protocol", DEFAULT_PROTOCOL) not in (2, 3) or isinstance(
            conn.get("protocol"), bool):
        raise ConfigError(f"connection.protocol must be 2 or 3, got {conn['protocol']!r}")
    return conn


def _sentinel_client(
    data: Any, connection: Any, common: dict[str, Any]
) -> tuple[Sentinel, Redis]:
    """A Sentinel manager and the client of the master it names (found on first connect)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"sentinel must be a mapping, got {type(data).__name__}")
    check_keys("sentinel.", data, _SENTINEL_KEYS)
    service = data.get("service_name")
    if not isinstance(service, str) or not service:
        raise ConfigError("sentinel.service_name must name the monitored master, e.g. 'mymaster'")
    hosts = _hosts(data.get("hosts"))
    conn = _connection(connection)
    if "host" in connection or "port" in connection:
        raise ConfigError("with sentinel, the master's address comes from the sentinels: "
                          "connection may set only db, username, password and ssl")
    del conn["host"], conn["port"]
    common = {**common, "protocol": conn.pop("protocol", common["protocol"])}
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": common["socket_timeout"],
        "socket_connect_timeout": common["socket_connect_timeout"],
        # the next sentinel is the retry: no need to hammer one that is down
        "retry": Retry(NoBackoff(), 0),
        "protocol": common["protocol"],
    }
    if data.get("password") is not None:
        sentinel_kwargs["password"] = data["password"]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return sentinel, sentinel.master_for(service, **conn, **common)


def _hosts(value: Any) -> list[tuple[str, int]]:
    """Sentinel addresses from ``["host:port", ...]`` or ``[["host", port], ...]``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigError("sentinel.hosts must be a non-empty list of 'host:port' or "
                          "[host, port]")
    hosts = []
    for item in value:
        if isinstance(item, str):
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"sentinel.hosts entry {item!r} is not 'host:port'")
            hosts.append((host, int(port)))
        elif (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], int) and not isinstance(item[1], bool)):
            hosts.append((item[0], item[1]))
        else:
            raise ConfigError(f"sentinel.hosts entry {item!r} is not 'host:port' or [host, port]")
    return hosts
