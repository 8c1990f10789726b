"""Plugin ``lock_free``: single-writer counters and log-bucket histograms (flag ``lock_free``)."""

from plugins.lock_free.metrics import LockFreeMetrics, LogHistogram

__all__ = ["LockFreeMetrics", "LogHistogram"]
