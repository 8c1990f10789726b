"""``Admission``: how many connections a listener takes, in all and per remote address.

A connection costs memory before anyone knows who is at the other end (its buffers, a TLS
handshake, a task). So a listener admits at most ``max_connections`` accepted connections
at once, and at most ``max_connections_per_address`` from one remote host; the excess is
closed at accept, before a byte is read. One host cannot take every slot, and a flood of
hosts cannot take more than the total. Refusals are counted, and logged at most once per
``log_interval`` seconds so that a flood does not also flood the log.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_CONNECTIONS_PER_ADDRESS", "Admission"]

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: Final = 256


class Admission:
    """Counts a listener's accepted connections by remote host and refuses the excess."""

    __slots__ = (
        "_by_host",
        "_log_interval",
        "_logged_at",
        "_max",
        "_max_per_host",
        "refused",
        "total",
    )

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        log_interval: float = 5.0,
    ) -> None:
        if not 0 < max_connections_per_address <= max_connections:
            raise ValueError(
                f"max_connections_per_address={max_connections_per_address} "
                f"max_connections={max_connections}: expected 0 < per address <= in all"
            )
        self._max = max_connections
        self._max_per_host = max_connections_per_address
        self._by_host: dict[str, int] = {}
        self._log_interval = log_interval
        self._logged_at: float | None = None
        self.total = 0
        """Connections admitted and not yet released."""
        self.refused = 0
        """Connections refused since creation."""

    def admit(self, host: str) -> str | None:
        """Take a slot for a connection from ``host`` (None), or say why not and count the
        refusal; an admitted connection must be ``release``d exactly once."""
        if self.total >= self._max:
            reason = f"{self.total} connections open (max_connections)"
        elif (count := self._by_host.get(host, 0)) >= self._max_per_host:
            reason = f"{count} connections open from {host} (max_connections_per_address)"
        else:
            self._by_host[host] = count + 1
            self.total += 1
            return None
        self.refused += 1
        return reason

    def release(self, host: str) -> None:
        self.total -= 1
        left = self._by_host[host] - 1
        if left:
            self._by_host[host] = left
        else:
            del self._by_host[host]

    def should_log(self, now: float) -> bool:
        """Whether a refusal at ``now`` is worth a log line (one per interval)."""
        if self._logged_at is not None and now - self._logged_at < self._log_interval:
            return False
        self._logged_at = now
        return True
