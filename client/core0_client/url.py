"""Where a node is and how to log in: ``CORE0_URL`` / ``url=``.

    redis://[user[:password]@]host[:port][/]
    rediss://[user[:password]@]host[:port][/]?ca=/path/ca.pem&cert=…&key=…
    unix://[user[:password]@]/path/to/redis.sock

``rediss`` is TLS, verified against ``ca`` (or the system's CAs) and the host name (or
``server_name=``); ``insecure=1`` turns verification off. User and password are
percent-decoded; without a user, the password is checked against Redis's ``default`` user
(0-core's one-argument AUTH). The password is never shown: ``repr``, ``str`` and error
messages print ``***`` in its place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

DEFAULT_PORT = 6379
_TLS_PARAMS = {"ca", "cert", "key", "insecure", "server_name"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class URLError(ValueError):
    """A malformed CORE0_URL (the message never contains the password)."""


@dataclass(frozen=True)
class Endpoint:
    """A node's Redis: TCP (optionally TLS) or a unix socket, with optional credentials."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unix_socket_path: str | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.unix_socket_path is None:
            if not self.host:
                raise URLError("no host")
            if not 0 < self.port < 65536:
                raise URLError(f"port {self.port} out of range")
        if self.key is not None and self.cert is None:
            raise URLError("a client key needs its certificate (cert=)")

    def display(self) -> str:
        """The URL with the password masked."""
        auth = ""
        if self.username or self.password:
            auth = quote(self.username or "", safe="") + (":***" if self.password else "") + "@"
        if self.unix_socket_path is not None:
            return f"unix://{auth}{self.unix_socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}{host}:{self.port}/"

    def __str__(self) -> str:
        return self.display()

    def __repr__(self) -> str:
        return f"Endpoint({self.display()!r})"


def _flag(name: str, value: str) -> bool:
    v = value.lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise URLError(f"{name}: expected 0 or 1, got {value!r}")


def parse_url(url: str) -> Endpoint:
    """An Endpoint from ``redis://``, ``rediss://`` or ``unix://`` URL."""
    if not isinstance(url, str) or not url:
        raise URLError("empty URL")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise URLError(f"unsupported scheme {scheme or url[:16]!r}: use redis://, rediss:// "
                       "or unix://")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        # urllib's message may quote the netloc, which holds the password: keep ours generic
        raise URLError(f"malformed {scheme}:// URL ({str(e).split(':')[0]})") from None
    if parts.fragment:
        raise URLError("a URL fragment (#…) is not allowed")
    params: dict[str, str] = {}
    for item in parts.query.split("&") if parts.query else []:
        k, sep, v = item.partition("=")
        k = unquote(k)
        if not sep and k != "insecure":
            raise URLError(f"query parameter {k!r} needs a value ({k}=…)")
        if not sep:
            v = "1"
        if k in params:
            raise URLError(f"query parameter {k!r} given twice")
        params[k] = unquote(v)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    if scheme == "unix":
        if params:
            raise URLError(f"unknown parameter {sorted(params)[0]!r} for unix://")
        if parts.hostname or port:
            raise URLError("unix:// takes a path: unix:///path/to/redis.sock")
        if not parts.path.startswith("/"):
            raise URLError("unix:// needs an absolute socket path")
        return Endpoint(unix_socket_path=unquote(parts.path), username=username,
                        password=password)
    if parts.path not in ("", "/", "/0"):
        raise URLError("only database 0 is supported (path must be empty or /)")
    if not parts.hostname:
        raise URLError(f"{scheme}:// needs a host")
    unknown = set(params) - (_TLS_PARAMS if scheme == "rediss" else set())
    if unknown:
        raise URLError(f"unknown parameter {sorted(unknown)[0]!r} for {scheme}://")
    return Endpoint(
        host=parts.hostname, port=port or DEFAULT_PORT, username=username, password=password,
        tls=scheme == "rediss", ca=params.get("ca") or None, cert=params.get("cert") or None,
        key=params.get("key") or None,
        verify=not _flag("insecure", params.get("insecure", "0")),
        server_name=params.get("server_name") or None,
    )
