"""raftmw-audit: an example third-party raftmw plugin (see plugin.py)."""
