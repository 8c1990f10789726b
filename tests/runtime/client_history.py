"""A KV client history for the linearizability checker, and the writers' tokens.

Writers append unique tokens (``"<writer>.<i>;"``) so that the final value of a key shows
every write that was applied, and how many times: a token twice is a write applied twice.
Times are a logical clock (one tick per call and per return), which keeps real-time order.
"""

from __future__ import annotations

import itertools

from framework.client import KVClient
from framework.errors import RaftError, Timeout
from framework.sim.linearizability import Operation

__all__ = ["History", "applied_tokens"]


class History:
    def __init__(self) -> None:
        self.clock = itertools.count(1)
        self.ops: list[Operation] = []
        self.acknowledged: dict[str, list[str]] = {}

    async def append(self, client: KVClient, writer: int, key: str, token: str) -> bool:
        call = next(self.clock)
        result: str | None
        try:
            result = await client.append(key, token)
            ret: int | None = next(self.clock)
        except Timeout:  # outcome unknown: it may apply at any time after its call
            result, ret = None, None
        self.ops.append(
            Operation(
                client_id=writer,
                kind="append",
                key=key,
                value=token,
                call=call,
                ret=ret,
                result=result,
            )
        )
        if ret is not None:
            self.acknowledged.setdefault(key, []).append(token)
        return ret is not None

    async def get(self, client: KVClient, writer: int, key: str) -> str | None:
        call = next(self.clock)
        try:
            result = await client.get(key)
        except RaftError:
            return None  # a read that failed constrains nothing
        self.ops.append(
            Operation(
                client_id=writer,
                kind="get",
                key=key,
                call=call,
                ret=next(self.clock),
                result=result,
            )
        )
        return result


def applied_tokens(value: str | None) -> list[str]:
    """The tokens in a key's final value, in the order they were applied."""
    return [token + ";" for token in (value or "").split(";")[:-1]]
