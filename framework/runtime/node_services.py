"""``NodeServices``: the services plugins run beside a node, and the context they get.

Services are built once when the node starts (``raftmw_node_service``), run as tasks of the
node's task group, and reach the node only through `NodeContext` (the
``framework.services.ServiceContext`` protocol): reads of the replicated state, flag
changes proposed as log entries, leadership transfer. See ``framework/services.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup

from framework.auth import ClientCredentials
from framework.flags import ClusterFlagState, Evaluation, FlagChange, FlagRegistry
from framework.plugins import PluginError
from framework.services import Service, ServiceError

if TYPE_CHECKING:
    from framework.config import Settings
    from framework.runtime.node import RaftNode

__all__ = ["NodeContext", "NodeServices"]

log = logging.getLogger("raftmw.services")


class NodeContext:
    """The node as its services see it (``ServiceContext``)."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node

    @property
    def node_id(self) -> int:
        return self._node.id

    @property
    def settings(self) -> Settings:
        return self._node.settings

    @property
    def registry(self) -> FlagRegistry:
        return self._node.flags.registry

    @property
    def cluster_flags(self) -> ClusterFlagState:
        return self._node.flags.cluster

    @property
    def flags(self) -> Mapping[str, Evaluation]:
        return dict(self._node.flags.current)

    @property
    def members(self) -> Mapping[int, str]:
        kernel = self._node.kernel
        addresses = self._node.addresses
        if kernel is None:
            return dict(addresses)
        conf = kernel.conf_state
        ids = set(conf.voters) | set(conf.learners)
        return {nid: addr for nid, addr in sorted(addresses.items()) if nid in ids}

    @property
    def credentials(self) -> ClientCredentials:
        tls = self._node.settings.tls
        return ClientCredentials(ca=tls.ca, cert=tls.cert, key=tls.key)

    def is_leader(self) -> bool:
        kernel = self._node.kernel
        return kernel is not None and kernel.leader == self._node.id

    def leader(self) -> int:
        kernel = self._node.kernel
        return kernel.leader if kernel is not None else 0

    def require_leader(self) -> None:
        self._node.clients.check_leader()

    async def propose_flags(self, change: FlagChange) -> int:
        try:
            index = await self._node.admin.propose_flag_change(change)
        except Exception as exc:
            reply = getattr(exc, "reply", None)
            if reply is not None and reply.kind == "bad_request":
                raise ServiceError(reply.message) from None
            raise
        refused = self._node.flags.cluster.migrations.refusal(index)
        if refused is not None:
            raise ServiceError(f"the cluster refused the entry at index {index}: {refused}")
        return index

    async def transfer_leader(self, to: int) -> None:
        await self._node.admin.transfer(to)

    async def wait_changed(self) -> None:
        await self._node._changed.wait()

    async def status(self) -> dict[str, Any]:
        return await self._node.status()

    def notify(self, hook: str, **kwargs: Any) -> None:
        self._node.host.notify(hook, **kwargs)

    def plugin_answers(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        return self._node.host.answers(hook, **kwargs)


class NodeServices:
    """The services of one node, by name."""

    def __init__(self, node: RaftNode) -> None:
        self.context = NodeContext(node)
        self._host = node.host
        self.services: dict[str, Service] = {}

    def build(self) -> None:
        """Ask every plugin for its service (once, when the node starts)."""
        caller = self._host.pm.hook.raftmw_node_service
        for impl in reversed(caller.get_hookimpls()):
            try:
                service = impl.function(ctx=self.context)
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed to build its service: {exc!r}"
                ) from exc
            if service is None:
                continue
            if not isinstance(service, Service):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} answered raftmw_node_service with "
                    f"{type(service).__name__}; expected a framework.services.Service"
                )
            if service.name in self.services:
                raise PluginError(
                    f"two services are named {service.name!r} (plugin {impl.plugin_name!r} "
                    "is the second); expected one service per name"
                )
            self.services[service.name] = service

    async def start(self, tg: TaskGroup) -> None:
        for name, service in self.services.items():
            await tg.start(service.run)
            log.info("node %d started service %s", self.context.node_id, name)

    async def handle(self, service: str, action: str, payload: bytes) -> dict[str, Any]:
        target = self.services.get(service)
        if target is None:
            raise ServiceError(
                f"no service named {service!r} runs on node {self.context.node_id}; "
                f"running: {sorted(self.services) or 'none'}"
            )
        return await target.handle(action, payload)

    def status(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for name, service in self.services.items():
            try:
                sections[name] = service.status()
            except Exception as exc:  # a status page must not fail for one plugin
                log.exception("service %s failed to report its status", name)
                sections[name] = {"error": repr(exc)}
        return sections
