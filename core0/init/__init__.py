"""The PID-1 shim and supervisor. Imports no command handler."""
