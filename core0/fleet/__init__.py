"""A node in a fleet: its registry entry (``registry``) and its metrics (``metrics``)."""
