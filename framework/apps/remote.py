"""``ObjectClient``: a replicated object used from another process, through awaitable proxies.

``ObjectClient(peers, Counter)`` is a ``KVClient`` (the same leader finding, attempt
timeouts, retries, sessions and errors: ``framework/client.py``) whose ``object`` is a
proxy of ``Counter``: ``await client.object.incr(5)`` sends the call, ``@replicated`` ones
as writes through the log with a client session (exactly once), ``@query`` ones as reads.
An exception raised inside the method on the cluster is raised here as
``ReplicatedError``. ``SyncObjectClient`` is the same for code that is not async, run on a
blocking portal (one event loop thread).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from framework.apps.objects import ReplicatedObject, decode_outcome, encode_call, methods_of
from framework.client import KVClient
from framework.transport.wire import AppCall, ClientResponse, RequestBody

__all__ = ["ObjectClient", "ObjectProxy", "SyncObjectClient"]

T = TypeVar("T", bound=ReplicatedObject)

LocalSend = Callable[[RequestBody], Awaitable[ClientResponse]]
"""An embedded node's way to answer a call itself (``framework.embed``)."""


class ObjectProxy(Generic[T]):
    """Awaitable stand-ins for the methods of ``cls``, sent through ``client``."""

    def __init__(self, client: KVClient, cls: type[T], local: LocalSend | None = None) -> None:
        self._client = client
        self._cls = cls
        self._app = cls.application()
        self._methods = methods_of(cls)
        self._local = local

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        kind = self._methods.get(name)
        if kind is None:
            raise AttributeError(
                f"{self._app} has no @replicated or @query method {name!r}; it has "
                f"{sorted(self._methods)}"
            )

        async def call(*args: Any, **kwargs: Any) -> Any:
            payload = encode_call(name, args, kwargs)
            return decode_outcome(await self._send(payload, kind))

        call.__name__ = name
        return call

    async def _send(self, payload: bytes, kind: str) -> bytes:
        client, app = self._client, self._app
        if kind == "replicated":
            data = await client._with_session(
                lambda client_id, seq: AppCall(
                    app=app, payload=payload, client_id=client_id, seq=seq
                ),
                self._local,
            )
        elif self._local is not None:
            body = AppCall(app=app, payload=payload, read=True, stale=kind == "stale_query")
            data = (await self._local(body)).data
        else:
            data = await client.app_call(app, payload, read=True, stale=kind == "stale_query")
        assert isinstance(data, bytes)
        return data


class ObjectClient(KVClient, Generic[T]):
    """A ``KVClient`` with a proxy of one replicated class: ``client.object``."""

    def __init__(
        self, peers: str | Sequence[str] | Mapping[int, str], cls: type[T], **options: Any
    ) -> None:
        super().__init__(peers, **options)
        self.object: ObjectProxy[T] = ObjectProxy(self, cls)

    async def __aenter__(self) -> ObjectClient[T]:
        await super().__aenter__()
        return self


class SyncObjectClient(Generic[T]):
    """A blocking facade over ``ObjectClient``: ``with SyncObjectClient(peers, Counter) as
    c: c.call("incr", 5)``."""

    def __init__(
        self, peers: str | Sequence[str] | Mapping[int, str], cls: type[T], **options: Any
    ) -> None:
        self._peers, self._cls, self._options = peers, cls, options
        self._portal_cm: Any = None
        self._portal: BlockingPortal | None = None
        self._client: ObjectClient[T] | None = None
        self._client_cm: Any = None

    def __enter__(self) -> SyncObjectClient[T]:
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        # One task of the portal holds the client open (its task group) until __exit__.
        self._client_cm = self._portal.wrap_async_context_manager(
            ObjectClient(self._peers, self._cls, **self._options)
        )
        self._client = self._client_cm.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._portal is not None and self._client is not None
        try:
            self._client_cm.__exit__(exc_type, exc, tb)
        finally:
            self._portal_cm.__exit__(exc_type, exc, tb)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on the replicated object and wait for its result."""
        assert self._portal is not None and self._client is not None
        bound = getattr(self._client.object, method)

        async def run() -> Any:
            return await bound(*args, **kwargs)

        return self._portal.call(run)
