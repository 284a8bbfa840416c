"""Start and stop real ``redis-server`` processes on free loopback ports for tests.

Never touches the machine's own Redis on 6379. In CI (``CI=true``) a missing
binary is a failure; locally the tests that need it skip with a reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
HOW_TO_GET = "install it with `apt-get install redis-server` (CI does this in .ci/run)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def require_binary(name: str = "redis-server") -> str:
    """The binary's path; fail in CI, skip locally if it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: {HOW_TO_GET}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _ping(port: int, timeout: float = 0.2) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


class RedisServer:
    """One redis-server process with no persistence, in its own temp directory."""

    def __init__(self, *extra: str, port: int | None = None, conf: str | None = None) -> None:
        self.binary = require_binary()
        # a port chosen here may be taken before the server binds it (a client's ephemeral
        # port, say): start() then tries another one, found the same way
        self._pick = (free_cluster_port if "--cluster-enabled" in extra else free_port) \
            if port is None or "--cluster-enabled" in extra else None
        self.port = port or free_port()
        self.extra = extra
        self.dir = Path(tempfile.mkdtemp(prefix="aiosessmgr-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        # a config file comes first on the command line (sentinel mode needs one it can rewrite)
        self.conf = None
        if conf is not None:
            self.conf = self.dir / "redis.conf"
            self.conf.write_text(conf)

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING (fail loudly otherwise).

        At its first start, a server that exits at once on a port this class chose gets two
        more tries, each on a new free port (the port was taken meanwhile); a restart keeps
        its port, which clients know."""
        first, self._pick = self._pick, None
        for attempt in range(3):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if first is None or attempt == 2 or "exited at start" not in str(exc):
                    raise
                self.port = first()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> RedisServer:
        args = [self.binary, *([str(self.conf)] if self.conf else []),
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--protected-mode", "no", *self.extra]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err}")
            try:
                if _ping(self.port).startswith((b"+PONG", b"-LOADING")):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """Kill the server (SIGKILL: no shutdown of its own) and wait for it to exit.

        ``start()`` afterwards runs it again on the same port with the same arguments.
        """
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cli(self, *args: str) -> str:
        """Run one command through ``redis-cli`` and return its output."""
        return cli(self.port, *args)

    def command_calls(self) -> dict[str, int]:
        """Calls per command since start, from ``INFO commandstats`` (``info`` excluded)."""
        calls: dict[str, int] = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line[len("cmdstat_"):].partition(":")
                fields = dict(item.split("=", 1) for item in stats.split(","))
                if name != "info":
                    calls[name] = int(fields["calls"])
        return calls

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections are accepted but never answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def cli(port: int, *args: str) -> str:
    """Run ``redis-cli -p port args...`` on 127.0.0.1 and return its stdout."""
    binary = require_binary("redis-cli")
    result = subprocess.run([binary, "-h", "127.0.0.1", "-p", str(port), *args],
                            capture_output=True, check=True, timeout=30)
    return result.stdout.decode()


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands (and how often) that ran between two :meth:`RedisServer.command_calls`."""
    delta = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in delta.items() if n}


class ClusterServers:
    """A Redis Cluster of *masters* masters (no replicas) on free ports."""

    def __init__(self, masters: int = 3) -> None:
        require_binary("redis-cli")
        self.nodes = [
            RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "5000", port=free_cluster_port())
            for _ in range(masters)
        ]

    @property
    def url(self) -> str:
        """A redis:// URL of one node (the client discovers the others)."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> ClusterServers:
        """Start the nodes, create the cluster and wait for ``cluster_state:ok`` everywhere."""
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            cli(self.nodes[0].port, "--cluster", "create", *addresses,
                "--cluster-replicas", "0", "--cluster-yes")
            wait_cluster_ok(self.nodes, timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.cleanup()


def wait_cluster_ok(nodes: list[RedisServer], timeout: float) -> None:
    """Poll until every node reports ``cluster_state:ok``; RuntimeError after *timeout* s."""
    deadline = time.monotonic() + timeout
    while not all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster not ok after {timeout}s")
        time.sleep(0.05)


def single_node_cluster(timeout: float = 10.0) -> RedisServer:
    """A started one-node Redis Cluster that holds every slot (cluster mode, one server).

    Much cheaper than :class:`ClusterServers` where routing between nodes does not
    matter. Needs Redis 7.0 (``CLUSTER ADDSLOTSRANGE``). The caller cleans it up.
    """
    node = RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       port=free_cluster_port()).start()
    try:
        node.cli("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        wait_cluster_ok([node], timeout)
    except BaseException:
        node.cleanup()
        raise
    return node


class SentinelServers:
    """One master and one sentinel monitoring it as *service_name*."""

    def __init__(self, service_name: str = "mymaster") -> None:
        self.service_name = service_name
        self.master = RedisServer()
        self.sentinel_port = free_port()
        self.sentinel = RedisServer(
            "--sentinel", port=self.sentinel_port,
            conf=(f"sentinel monitor {service_name} 127.0.0.1 {self.master.port} 1\n"
                  f"sentinel down-after-milliseconds {service_name} 5000\n"),
        )

    def start(self, timeout: float = 10.0) -> SentinelServers:
        """Start both and wait until the sentinel names the master."""
        try:
            self.master.start()
            self.sentinel.start()
            deadline = time.monotonic() + timeout
            while str(self.master.port) not in self.sentinel.cli(
                    "SENTINEL", "get-master-addr-by-name", self.service_name):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sentinel does not know the master after {timeout}s")
                time.sleep(0.05)
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        """Stop both servers."""
        self.sentinel.cleanup()
        self.master.cleanup()
