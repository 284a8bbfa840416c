"""Auto-pipelining: the commands issued during one event-loop turn, sent as one pipeline.

Built on redis-py's public API alone: a batch of several commands goes through the
client's ``pipeline(transaction=False)`` (single node, Sentinel master, or Cluster,
where redis-py splits it per node), a batch of one through ``execute_command``. Either
way redis-py applies its response callbacks, takes and checks pooled connections, and
retries as the client is configured, so a command answers the same, with the same
types, whether it was batched or not.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from .client import RedisClient

__all__ = ["AutoPipeline", "Command", "execute"]

Command = tuple[str | bytes | int, ...]


class AutoPipeline:
    """Sends the commands issued during one event-loop turn as one pipeline.

    The first command of a turn starts a task; tasks run on the next turn, by which
    time every coroutine that ran in this turn has queued its command. The task sends
    the queue as one pipeline and resolves each caller's future with its own reply or
    error: an error reply (``raise_on_error=False``) is that caller's alone. A failure
    of the whole batch (connection lost after redis-py's retry, or the overall timeout)
    fails every caller still waiting. On a Cluster, a command whose node connection
    failed during the pipeline (redis-py reports that per command and does not retry
    it) is sent once more on its own, which re-reads the topology if it must.
    """

    def __init__(self, client: RedisClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._queue: list[tuple[Command, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._submitting = False

    def submit(self, command: Command) -> asyncio.Future[Any]:
        """Queue *command* for this turn's pipeline; the future gets its reply."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, future))
        if len(self._queue) == 1:
            self._submitting = True
            try:
                task = loop.create_task(self._flush())
            finally:
                self._submitting = False
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    async def _flush(self) -> None:
        if self._submitting:
            # started eagerly (an eager task factory, Python 3.12+): wait for the turn's end
            await asyncio.sleep(0)
        batch, self._queue = self._queue, []
        try:
            async with asyncio.timeout(self._timeout):
                replies = await execute(self._client, [command for command, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up (cancelled); the command ran anyway
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def drain(self) -> None:
        """Wait until every batch already sent has been answered."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def execute(client: RedisClient, commands: list[Command]) -> list[Any]:
    """One reply or exception per command, in order; raises if the batch failed.

    Several commands go as one ``pipeline(transaction=False)`` (one round trip; on a
    Cluster one per node, redis-py grouping them), one as ``execute_command``; error
    replies are returned in their command's place. On a Cluster, a command whose node
    connection failed is sent once more on its own. RuntimeError if redis-py answers
    another number of replies than commands. The caller bounds the time.
    """
    if len(commands) == 1:
        # a pipeline of one would cost a quarter more of redis-py's time for the
        # same wire traffic, callbacks and retries
        try:
            return [await client.execute_command(*commands[0])]
        except ResponseError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    replies: list[Any] = list(await pipe.execute(raise_on_error=False))
    if isinstance(client, RedisCluster):
        lost = [i for i, reply in enumerate(replies)
                if isinstance(reply, RedisConnectionError)]
        if lost:
            again = await asyncio.gather(
                *(client.execute_command(*commands[i]) for i in lost),
                return_exceptions=True,
            )
            for i, reply in zip(lost, again, strict=True):
                replies[i] = reply
    if len(replies) != len(commands):
        # redis-py answers each command once; never hand a caller another's reply
        raise RuntimeError(f"the pipeline answered {len(replies)} replies to "
                           f"{len(commands)} commands")
    return replies
