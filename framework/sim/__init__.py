"""Deterministic simulation of raftmw clusters and the checkers that judge their histories."""
