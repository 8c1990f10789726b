"""The built-in TCP transport, offered through the ``raftmw_make_transport`` hook."""
