"""raftmw."""
