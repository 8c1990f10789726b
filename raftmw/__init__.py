"""raftmw's public API for applications: replicate your own Python objects.

``ReplicatedObject`` with ``@replicated`` and ``@query`` methods (``framework.apps.objects``),
used remotely through ``ObjectClient`` / ``SyncObjectClient`` (``framework.apps.remote``) or
in-process through ``embed`` (``framework.embed``); ``LockService``, the distributed lock
service with leases and fencing tokens (``framework.apps.locks``); ``NondeterministicCall``,
what a clock or random call inside a ``@replicated`` method raises.
"""

from framework.apps.determinism import NondeterministicCall
from framework.apps.locks import LockService
from framework.apps.objects import ReplicatedError, ReplicatedObject, query, replicated
from framework.apps.remote import ObjectClient, SyncObjectClient
from framework.embed import EmbeddedNode, embed

__all__ = [
    "EmbeddedNode",
    "LockService",
    "NondeterministicCall",
    "ObjectClient",
    "ReplicatedError",
    "ReplicatedObject",
    "SyncObjectClient",
    "embed",
    "query",
    "replicated",
]
