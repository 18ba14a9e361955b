"""core0: a node's PID 1 driven through Redis, speaking Zero-OS 0-core's wire protocol."""

__version__ = "0.1.0"
