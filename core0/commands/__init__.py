"""The API face of core0: one module per domain, each registering its commands."""
