"""qemu harness of core0 (see harness.py)."""
