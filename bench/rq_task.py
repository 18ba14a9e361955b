"""The task rq runs in bench/ping.py (importable by the rq worker)."""


def ping() -> str:
    return "PONG"
