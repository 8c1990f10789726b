"""Feature flags: declared by plugins, set by layered sources, evaluated per node.

Theory of operation
-------------------
A flag is declared once, by the plugin that owns it (`FlagSpec`: name, default, owner), in a
`FlagRegistry`. Values come from layers (`FlagLayer`), one per `Source`; from lowest to
highest precedence:

====================  ==================================================================
``PLUGIN_DEFAULT``    the declaring plugin's default (``FlagSpec.default``; implicit)
``SETTINGS_DEFAULT``  settings files: settings.toml ``[default]``, ``--settings FILE``
``PROFILE``           the active profile's table (``[high_throughput.flags]``)
``ENVIRONMENT``       ``RAFTMW_FLAGS__NAME=...``
``COMMAND_LINE``      ``--flag name=value`` (the CLI hands them to settings as overrides)
``CLUSTER``           the replicated flag state: ``flags`` entries of the Raft log
``OVERRIDE``          a node-local break-glass override (never replicated)
====================  ==================================================================

The highest layer that sets a flag decides it, whole: a rollout from the cluster replaces a
rollout from settings, it is not merged with it (settings merge their own layers key by key
before this module sees them; `layers_from_settings` says how their provenance maps to a
`Source`).

Every evaluation (`Evaluation`) says why, in OpenFeature's vocabulary (`Reason`): DEFAULT
(nobody set it: the plugin's default), STATIC (a plain true/false, or a disabled rollout),
OVERRIDE (a plain value from the break-glass layer), TARGETING_MATCH (the node is named in
the rollout's ``include`` or ``exclude``; ``exclude`` wins), SPLIT (the percentage decided)
and ERROR (the value was malformed; the plugin's default is used and ``detail`` says what
was wrong). Evaluation never raises for a bad value: a node must keep running on defaults
rather than crash on one bad layer. It does raise `UnknownFlag` for a name nobody declared,
which is a programming error at the call site.

The rollout hash. A node is in a ``percent`` rollout when ``bucket(flag, node) < percent``,
where the bucket is the first 8 bytes of ``sha256(f"{flag}:{node}")`` read as a big-endian
integer and scaled to [0, 100). The bucket depends only on (flag, node), never on the
percent, the cluster size or the process (no ``hash()`` and its per-process seed), so:

- every node computes the same answer for every other node (``raftmw flags`` can show the
  whole cluster from one place);
- raising the percent only adds nodes and lowering it only removes them (a node's bucket is
  fixed and the test is a threshold), so a rollout from 10% to 25% never flips a node that
  was already on back off;
- salting with the flag name makes different flags pick different nodes first, so the
  same unlucky node is not the canary of every rollout.

The formula is pinned by a golden test: changing it would silently move nodes in and out
of every running rollout on upgrade.

Cluster changes. A `FlagChange` (some flags set, some unset, an operator's note) is one Raft
log entry of kind ``flags``, so a change is atomic however many flags it touches, and every
node switches at the same log index. `ClusterFlagState` applies committed changes in log
order and remembers, for each flag, the index that set it (shown as
``Evaluation.log_index``). Validation against the registry (`validate_change`) happens
before proposing, never while applying: a node missing a plugin must apply the same entries
to the same state as its peers, so `ClusterFlagState.apply` stores names it does not know
and evaluation simply never asks for them. Rollback is just another change.

Where each part lives (this module re-exports the public names, so ``framework.flags`` is
the one import): declarations and errors in `framework.flag_registry`; sources, layers,
the hash and evaluation in `framework.flag_evaluation`; cluster changes and the replicated
state in `framework.flag_changes`; the ``--flag`` syntax in `framework.flag_assignment`.
They are pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

from framework.flag_assignment import parse_flag_assignment
from framework.flag_changes import (
    HISTORY_LIMIT,
    ClusterFlagState,
    FlagChange,
    RolloutWire,
    decode_flag_change,
    dependency_problems,
    encode_flag_change,
    validate_change,
)
from framework.flag_evaluation import (
    LOCK_FREE_FLAG,
    Evaluation,
    FlagLayer,
    Reason,
    Source,
    bucket,
    evaluate,
    evaluate_all,
    layers_from_settings,
    validate_layers,
)
from framework.flag_registry import FlagError, FlagRegistry, FlagSpec, UnknownFlag

__all__ = [
    "HISTORY_LIMIT",
    "LOCK_FREE_FLAG",
    "ClusterFlagState",
    "Evaluation",
    "FlagChange",
    "FlagError",
    "FlagLayer",
    "FlagRegistry",
    "FlagSpec",
    "Reason",
    "RolloutWire",
    "Source",
    "UnknownFlag",
    "bucket",
    "decode_flag_change",
    "dependency_problems",
    "encode_flag_change",
    "evaluate",
    "evaluate_all",
    "layers_from_settings",
    "parse_flag_assignment",
    "validate_change",
    "validate_layers",
]
