"""The settings objects: everything settings.toml describes, frozen and validated.

Each section of settings.toml is a frozen dataclass; each field says in its metadata how it
is read and written (`framework.settings_kinds`), and a section with rules across its fields
checks them in ``_validate(key)``. `settings_from_mapping` reads a complete nested mapping
into `Settings`; `settings_to_mapping` and `settings_to_toml` write it back. Loading the
layers (packaged defaults, profiles, files, environment, overrides) is `framework.config`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import tomli_w

from framework.settings_kinds import (
    BOOL,
    DURATION,
    DURATION_OR_ZERO,
    NODE_IDS,
    AutoOrDuration,
    Choice,
    Free,
    FrozenMap,
    Hex,
    Int,
    Kind,
    ListOf,
    Number,
    OptionalText,
    Section,
    SettingsError,
    Size,
    TableOf,
    Text,
    as_metadata,
    format_duration,
    read_dataclass,
    show_value,
    write_dataclass,
)

__all__ = [
    "ATTEMPT_TIMEOUT_FLOOR",
    "BackpressureSettings",
    "CircuitBreakerSettings",
    "ClientSettings",
    "FlagValue",
    "PerformanceSettings",
    "PluginSettings",
    "RaftSettings",
    "Rollout",
    "SecuritySettings",
    "Settings",
    "StorageSettings",
    "TimeoutSettings",
    "TlsSettings",
    "TokenSettings",
    "TransportSettings",
    "settings_from_mapping",
    "settings_to_mapping",
    "settings_to_toml",
]


class _Flag(Kind):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(
            "true, false or a rollout table like "
            "{ enabled = true, percent = 25, include = [1], exclude = [3] }"
        )

    def read(self, key: str, raw: object) -> FlagValue:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, Mapping):
            return read_dataclass(Rollout, key, raw)
        raise self.fail(key, raw, "is not a flag value")

    def write(self, value: Any) -> Any:
        return value if isinstance(value, bool) else write_dataclass(value)


def _empty_map() -> Mapping[str, str]:
    return FrozenMap()


@dataclass(frozen=True, slots=True, kw_only=True)
class RaftSettings:
    """The kernel's knobs (etcd/raft `Config` names). Durations in seconds, sizes in bytes."""

    tick_interval: float = field(metadata=DURATION)
    election_tick: int = field(metadata=as_metadata(Int(1)))
    heartbeat_tick: int = field(metadata=as_metadata(Int(1)))
    pre_vote: bool = field(metadata=as_metadata(BOOL))
    check_quorum: bool = field(metadata=as_metadata(BOOL))
    max_inflight_msgs: int = field(metadata=as_metadata(Int(1)))
    max_size_per_msg: int = field(metadata=as_metadata(Size()))
    max_uncommitted_entries_size: int = field(metadata=as_metadata(Size()))  # 0: no limit
    lease_reads: bool = field(metadata=as_metadata(BOOL))
    snapshot_threshold_entries: int = field(metadata=as_metadata(Int(1)))
    max_batch_proposals: int = field(metadata=as_metadata(Int(1)))
    lease_drift_ticks: int = field(default=4, metadata=as_metadata(Int(0)))
    broadcast_commit: bool = field(default=False, metadata=as_metadata(BOOL))
    snapshot_trailing_entries: int = field(default=5000, metadata=as_metadata(Int(0)))
    """Entries kept before a snapshot's index when the log is compacted, so a briefly
    lagging follower catches up from the log instead of a whole snapshot."""

    def _validate(self, key: str) -> None:
        # Heartbeats must come more often than followers time out, or a healthy leader
        # loses its followers between two heartbeats.
        if self.election_tick <= self.heartbeat_tick:
            raise SettingsError(
                f"{key}.election_tick",
                f"is not greater than {key}.heartbeat_tick ({self.heartbeat_tick})",
                "an election_tick greater than heartbeat_tick (etcd uses 10 times it)",
                value=self.election_tick,
            )
        # A lease read is sound only if the lease ends before a follower may vote again.
        if self.lease_reads and not 2 <= self.lease_drift_ticks < self.election_tick:
            raise SettingsError(
                f"{key}.lease_drift_ticks",
                f"is out of range for lease_reads with election_tick {self.election_tick}",
                "at least 2 (a tick of granularity on each side) plus the clock drift over "
                "an election timeout, and less than election_tick",
                value=self.lease_drift_ticks,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSettings:
    engine: str = field(metadata=as_metadata(Choice("sqlite", "memory")))
    sync: str = field(metadata=as_metadata(Choice("always", "os")))
    data_dir: str = field(metadata=as_metadata(Text("a directory path")))


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSettings:
    kind: str = field(metadata=as_metadata(Text('a transport name, like "tcp"')))
    max_frame_size: int = field(metadata=as_metadata(Size(minimum=1024)))
    max_message_size: int = field(metadata=as_metadata(Size(minimum=1024)))
    connect_timeout: float = field(metadata=DURATION)
    dead_connection_timeout: float = field(metadata=DURATION)
    reconnect_backoff_min: float = field(metadata=DURATION_OR_ZERO)
    reconnect_backoff_max: float | None = field(metadata=as_metadata(AutoOrDuration()))
    """None for ``"auto"``: see ``Settings.reconnect_backoff_max``."""

    def _validate(self, key: str) -> None:
        if self.max_message_size < self.max_frame_size:
            raise SettingsError(
                f"{key}.max_message_size",
                f"is less than max_frame_size ({self.max_frame_size} bytes)",
                "a size at least max_frame_size",
                value=str(self.max_message_size),
            )
        explicit = self.reconnect_backoff_max
        if explicit is not None and explicit < self.reconnect_backoff_min:
            raise SettingsError(
                f"{key}.reconnect_backoff_max",
                f"is less than reconnect_backoff_min "
                f"({show_value(format_duration(self.reconnect_backoff_min))})",
                'a duration at least reconnect_backoff_min, or "auto"',
                value=format_duration(explicit),
            )


ATTEMPT_TIMEOUT_FLOOR: Final = 0.5
"""Seconds: the least ``client.attempt_timeout = "auto"`` gives, so a slow link or a busy
leader is not given up on after a fast profile's 100ms election timeout."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """A node's certificates (``raftmw tls init`` makes them); all three or none."""

    ca: str = field(default="", metadata=as_metadata(OptionalText('a PEM file path, or ""')))
    cert: str = field(default="", metadata=as_metadata(OptionalText('a PEM file path, or ""')))
    key: str = field(default="", metadata=as_metadata(OptionalText('a PEM file path, or ""')))
    insecure: bool = field(default=False, metadata=as_metadata(BOOL))
    """Listen on a non-loopback address without TLS anyway (``--insecure``)."""

    @property
    def enabled(self) -> bool:
        return bool(self.ca)

    def _validate(self, key: str) -> None:
        given = [name for name in ("ca", "cert", "key") if getattr(self, name)]
        if given and len(given) != 3:
            missing = sorted({"ca", "cert", "key"} - set(given))
            raise SettingsError(
                f"{key}.{missing[0]}",
                f"is missing while {', '.join(f'{key}.{g}' for g in given)} "
                f"{'is' if len(given) == 1 else 'are'} set",
                "all of tls.ca, tls.cert and tls.key, or none of them",
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSettings:
    """A client token: the role it grants and the SHA-256 of the token (never the token)."""

    role: str = field(metadata=as_metadata(Choice("read-write", "admin")))
    sha256: str = field(
        metadata=as_metadata(Hex(64, "the token's SHA-256 as 64 hex digits (raftmw tls token)"))
    )


def _no_tokens() -> Mapping[str, TokenSettings]:
    return FrozenMap()


@dataclass(frozen=True, slots=True, kw_only=True)
class SecuritySettings:
    """Bounds on connections before authentication, and client tokens."""

    max_connections: int = field(default=1024, metadata=as_metadata(Int(1)))
    max_connections_per_address: int = field(default=256, metadata=as_metadata(Int(1)))
    handshake_frame_size: int = field(default=4096, metadata=as_metadata(Size(minimum=64)))
    tokens: Mapping[str, TokenSettings] = field(
        default_factory=_no_tokens,
        metadata=as_metadata(
            TableOf(Section(TokenSettings), "a table of token name -> { role, sha256 }")
        ),
    )

    def _validate(self, key: str) -> None:
        if self.max_connections_per_address > self.max_connections:
            raise SettingsError(
                f"{key}.max_connections_per_address",
                f"is more than max_connections ({self.max_connections})",
                "at most max_connections",
                value=self.max_connections_per_address,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    request_timeout: float = field(metadata=DURATION)
    attempt_timeout: float | None = field(metadata=as_metadata(AutoOrDuration()))
    """None for ``"auto"``: see ``Settings.client_attempt_timeout``."""
    retry_backoff: float = field(metadata=DURATION_OR_ZERO)

    def _validate(self, key: str) -> None:
        if self.attempt_timeout is not None and self.attempt_timeout > self.request_timeout:
            raise SettingsError(
                f"{key}.attempt_timeout",
                f"is longer than {key}.request_timeout "
                f"({show_value(format_duration(self.request_timeout))}), the deadline of the "
                "whole request",
                '"auto" or a duration at most request_timeout',
                value=format_duration(self.attempt_timeout),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressureSettings:
    max_pending: int = field(metadata=as_metadata(Int(1)))
    enable_priority: bool = field(metadata=as_metadata(BOOL))
    memory_pressure_threshold: float = field(
        metadata=as_metadata(Number(0, 1, "a number from 0 to 1, like 0.8"))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerSettings:
    failure_threshold: int = field(metadata=as_metadata(Int(1)))
    timeout: float = field(metadata=DURATION)
    success_threshold: int = field(metadata=as_metadata(Int(1)))


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutSettings:
    """One operation's timeout: fixed at base_timeout, or adaptive between the bounds."""

    base_timeout: float = field(metadata=DURATION)
    max_timeout: float = field(metadata=DURATION)
    enable_adaptive: bool = field(metadata=as_metadata(BOOL))

    def _validate(self, key: str) -> None:
        if self.max_timeout < self.base_timeout:
            raise SettingsError(
                f"{key}.max_timeout",
                f"is less than base_timeout ({show_value(format_duration(self.base_timeout))})",
                "a duration at least base_timeout",
                value=format_duration(self.max_timeout),
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class PerformanceSettings:
    """The plan's PerformanceConfig; ``timeouts`` is keyed by operation name."""

    enable_lock_free: bool = field(metadata=as_metadata(BOOL))
    backpressure: BackpressureSettings = field(metadata=as_metadata(Section(BackpressureSettings)))
    circuit_breaker: CircuitBreakerSettings = field(
        metadata=as_metadata(Section(CircuitBreakerSettings))
    )
    timeouts: Mapping[str, TimeoutSettings] = field(
        metadata=as_metadata(
            TableOf(
                Section(TimeoutSettings),
                "a table of operation name -> { base_timeout, max_timeout, enable_adaptive }",
            )
        )
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """A flag rolled out to part of the cluster.

    Only the shape is checked here; `framework.flag_evaluation` decides who is in
    (``include`` always, ``exclude`` never, the rest by a stable hash against ``percent``).
    """

    enabled: bool = field(default=True, metadata=as_metadata(BOOL))
    percent: float = field(
        default=100.0, metadata=as_metadata(Number(0, 100, "a percentage from 0 to 100"))
    )
    include: tuple[int, ...] = field(default=(), metadata=NODE_IDS)
    exclude: tuple[int, ...] = field(default=(), metadata=NODE_IDS)

    def _validate(self, key: str) -> None:
        both = sorted(set(self.include) & set(self.exclude))
        if both:
            raise SettingsError(
                f"{key}.exclude",
                f"repeats node ids of {key}.include: {both}",
                "each node id in at most one of include and exclude",
                value=list(self.exclude),
            )


FlagValue: TypeAlias = bool | Rollout


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginSettings:
    blocked: tuple[str, ...] = field(metadata=as_metadata(ListOf(Text(), "a list of plugin names")))
    enabled: tuple[str, ...] = field(metadata=as_metadata(ListOf(Text(), "a list of plugin names")))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything settings.toml describes, validated.

    ``sources`` maps each dotted key to the layer that set it ("default", "profile NAME", a
    file path, an environment variable's name, "override"); it is provenance, not part of
    the value, so it does not take part in ``==``.
    """

    raft: RaftSettings = field(metadata=as_metadata(Section(RaftSettings)))
    storage: StorageSettings = field(metadata=as_metadata(Section(StorageSettings)))
    transport: TransportSettings = field(metadata=as_metadata(Section(TransportSettings)))
    client: ClientSettings = field(metadata=as_metadata(Section(ClientSettings)))
    performance: PerformanceSettings = field(metadata=as_metadata(Section(PerformanceSettings)))
    flags: Mapping[str, FlagValue] = field(
        metadata=as_metadata(TableOf(_Flag(), "a table of flag name -> flag value"))
    )
    plugins: PluginSettings = field(metadata=as_metadata(Section(PluginSettings)))
    plugin: Mapping[str, Mapping[str, object]] = field(
        metadata=as_metadata(TableOf(Free(), "a table of plugin name -> its own settings table"))
    )
    """Each plugin's own settings, ``[plugin.<name>]``, as written (the plugin validates)."""
    tls: TlsSettings = field(
        default_factory=TlsSettings, metadata=as_metadata(Section(TlsSettings))
    )
    security: SecuritySettings = field(
        default_factory=SecuritySettings, metadata=as_metadata(Section(SecuritySettings))
    )
    sources: Mapping[str, str] = field(default_factory=_empty_map, compare=False)

    @property
    def election_timeout(self) -> float:
        """The shortest election timeout, in seconds: ``raft.election_tick`` x
        ``raft.tick_interval`` (a follower campaigns between one and two of them)."""
        return self.raft.election_tick * self.raft.tick_interval

    @property
    def client_attempt_timeout(self) -> float:
        """How long a client waits for one node before trying another (seconds).

        ``client.attempt_timeout`` if set; for ``"auto"``, one election timeout
        (``raft.election_tick`` x ``raft.tick_interval``: a leader silent that long is what
        followers take for dead) but at least ``ATTEMPT_TIMEOUT_FLOOR``, and never past
        ``client.request_timeout``.
        """
        explicit = self.client.attempt_timeout
        if explicit is not None:
            return explicit
        return min(self.client.request_timeout, max(ATTEMPT_TIMEOUT_FLOOR, self.election_timeout))

    @property
    def reconnect_backoff_max(self) -> float:
        """The longest wait before redialling a lost peer (seconds).

        ``transport.reconnect_backoff_max`` if set; for ``"auto"``, one election timeout
        (``raft.election_tick`` x ``raft.tick_interval``), but at least
        ``transport.reconnect_backoff_min``. Only the lower id of a pair dials (``tcp`` rule
        1), so a restarted peer with a higher id is not linked to it again until this wait
        ends: a longer one left the pair unlinked for up to 2 s, and a leader failing in
        that time could not be replaced (its two followers could not reach each other), so
        a write waited out two more client attempts (issue #15's notes).
        """
        explicit = self.transport.reconnect_backoff_max
        if explicit is not None:
            return explicit
        return max(self.transport.reconnect_backoff_min, self.election_timeout)


# --------------------------------------------------------------------------- public helpers


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate a complete, plain nested mapping (e.g. parsed TOML) into `Settings`.

    Nothing is filled in: a missing key is an error. To check a partial file on top of the
    defaults, use ``load_settings(files=[path])``.
    """
    return read_dataclass(Settings, "", data)


def settings_to_mapping(settings: Settings) -> dict[str, Any]:
    """Plain nested dict, as TOML spells it: durations "200ms", sizes "64MiB", lists."""
    return write_dataclass(settings)


def settings_to_toml(settings: Settings) -> str:
    """A flat settings file (the ``--settings`` layout) that loads back to equal settings."""
    return tomli_w.dumps(settings_to_mapping(settings))
