"""Applications a raftmw cluster runs: replicated objects (``objects``), the lock service
(``locks``), and loading an application by name (``loading``)."""
