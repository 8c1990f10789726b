"""Fault injection (flag ``chaos``, optional tier): latency on peer sends or on
persistence, dropped messages to chosen peers, components that fail to build.

One home for faults, shared by tests, ``raftmw demo migration`` and any comparison that
wants a degraded mode: `ChaosConfig` is read from ``[plugin.chaos]``; `ChaosStore` and
`ChaosTransport` wrap the node's log store and transport (``raftmw_wrap_log_store``,
``raftmw_wrap_transport``) and act only while the node's ``chaos`` flag is on, so the
faults follow the flag like any mode: per node, per percentage, or in a staged
migration's cohort. The hook implementations live in ``plugins.chaos.plugin``.
"""

from plugins.chaos.faults import ChaosConfig, ChaosFault, ChaosStore, ChaosSwitch, ChaosTransport

__all__ = ["ChaosConfig", "ChaosFault", "ChaosStore", "ChaosSwitch", "ChaosTransport"]
