"""Shadow mode's flag (``shadow``): see ``framework/runtime/shadow.py``."""
