"""The core0 wire protocol: the one module shared by core0 and its clients.

core0 speaks Zero-OS 0-core's Redis protocol (see docs/protocol.md):

* a client RPUSHes a command JSON onto a queue list (``core:default``);
* core0 moves it atomically into ``<queue>:processing`` (BLMOVE), pushes ``""`` to
  ``result:<id>:flag`` when it picks the job up, and RPUSHes the result JSON to ``result:<id>``
  (with a TTL) when the job ends;
* output records go to ``stream:<id>`` (0-core's destructive list, opt-in with ``stream: true``)
  and to ``log:<id>`` (a Redis Stream: many readers, resumable).

Everything here is plain data: no I/O, no Redis client.
"""

from __future__ import annotations

import enum
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _quote  # what _COMPACT uses for strings
from typing import Any

from core0_client.errors import ProtocolError

#: one compact encoder for every record (json.dumps with options builds a new one per call)
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()  # json.loads's own, without its per-call checks

__all__ = ["ID_PATTERN", "Code", "Command", "Keys", "Level", "LogRecord", "ProtocolError",
           "Result", "State", "decode_command", "recover_id", "new_id"]

#: Ids core0 accepts. 0-core clients use uuid4 strings, which match.
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

#: Id prefixes of core0's own jobs (boot services, DHCP clients, dnsmasq…, a container's
#: ``/.startup.toml`` services): refused from the bus
RESERVED_ID_PREFIXES = ("svc:", "dhcp:", "dnsmasq.", "core0.", "startup:")

#: Largest command (bytes) core0 parses by default; bigger ones get a 400 result.
DEFAULT_MAX_COMMAND_BYTES = 1 << 20
#: Deepest JSON nesting accepted in a command.
MAX_DEPTH = 64


class State(enum.StrEnum):
    """Terminal job states, as 0-core names them."""

    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    KILLED = "KILLED"
    UNKNOWN_CMD = "UNKNOWN_CMD"
    DUPLICATE_ID = "DUPLICATE_ID"
    #: 0-core's own misspelling, accepted on input only.
    DUPILICATE_ID = "DUPILICATE_ID"

    @classmethod
    def parse(cls, value: str) -> State:
        if value == "DUPILICATE_ID":
            return cls.DUPLICATE_ID
        return cls(value)


class Code(enum.IntEnum):
    """Result codes of builtins (HTTP-like). Processes report ``1000 + exit status``."""

    OK = 0
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    NOT_ACCEPTABLE = 406
    TIMEOUT = 408
    CONFLICT = 409
    PRECONDITION_FAILED = 412
    TOO_LARGE = 413
    KILLED = 499
    INTERNAL = 500
    NOT_IMPLEMENTED = 501
    UNAVAILABLE = 503

    #: Base added to a process's exit status; death by signal N is ``PROCESS + 128 + N``.
    PROCESS = 1000


class Level(enum.IntEnum):
    """Message levels of 0-core's output protocol (``N::text`` and ``N:::`` blocks)."""

    STDOUT = 1
    STDERR = 2
    PUBLIC = 3
    OPERATOR = 4
    UNKNOWN = 5
    STRUCTURED = 6
    WARNING = 7
    OPS_ERROR = 8
    CRITICAL = 9
    STATSD = 10
    DEBUG = 11
    LOG_JSON = 15
    RESULT_JSON = 20
    RESULT_YAML = 21
    RESULT_TOML = 22
    RESULT_HRD = 23
    JOB = 30


#: Flags in the low 16 bits of a stream record's ``meta``.
FLAG_STREAM = 0x1
FLAG_EOF_SUCCESS = 0x2
FLAG_EOF_ERROR = 0x4
FLAGS_EOF = FLAG_EOF_SUCCESS | FLAG_EOF_ERROR


def new_id() -> str:
    """A fresh job id (uuid4, as 0-core's clients make them)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Keys:
    """Redis key names. ``prefix`` ("" = 0-core's names) allows many nodes on one Redis.

    For Redis Cluster use a hash-tagged prefix such as ``{node1}:`` so that every key of a
    node lives in one slot (BLMOVE and the result scripts touch several keys at once).
    """

    prefix: str = ""

    def queue(self, name: str = "default") -> str:
        return f"{self.prefix}core:{name}"

    @staticmethod
    def processing(queue_key: str) -> str:
        return f"{queue_key}:processing"

    @staticmethod
    def dead(queue_key: str) -> str:
        return f"{queue_key}:dead"

    def flag(self, job_id: str) -> str:
        return f"{self.prefix}result:{job_id}:flag"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}result:{job_id}"

    def run_result(self, job_id: str, run: int) -> str:
        return f"{self.prefix}result:{job_id}:{run}"

    def stream(self, job_id: str) -> str:
        return f"{self.prefix}stream:{job_id}"

    def log(self, job_id: str) -> str:
        return f"{self.prefix}log:{job_id}"

    def deliveries(self) -> str:
        return f"{self.prefix}core0:deliveries"

    def stats(self) -> str:
        return f"{self.prefix}core0:stats"

    def node(self) -> str:
        return f"{self.prefix}core0:node"


#: the fleet's node registry: ``nodes:<id>`` (JSON, with a TTL) and an index of the ids by
#: expiry time (a sorted set, trimmed and given a TTL on every heartbeat)
NODES_PREFIX = "nodes:"
NODES_INDEX = "nodes:{index}"


def node_key(node_id: str) -> str:
    """The registry entry of a node (outside any node's prefix: every node's, in one place)."""
    return f"{NODES_PREFIX}{node_id}"


_COMMAND_FIELDS = {
    "id",
    "command",
    "arguments",
    "queue",
    "max_time",
    "max_restart",
    "recurring_period",
    "stream",
    "tags",
    # sent by 0-core's clients, parsed and ignored (as 0-core itself did)
    "stats_interval",
    "log_levels",
}


@dataclass(frozen=True)
class Command:
    """A command as it travels on the queue."""

    command: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    queue: str | None = None
    max_time: int | None = None
    max_restart: int | None = None
    recurring_period: int | None = None
    stream: bool = False
    tags: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form, with every optional field present (as 0-core's clients send it)."""
        return {
            "id": self.id,
            "command": self.command,
            "arguments": self.arguments,
            "queue": self.queue,
            "max_time": self.max_time,
            "max_restart": self.max_restart,
            "recurring_period": self.recurring_period,
            "stream": self.stream,
            "tags": self.tags,
        }

    def to_json(self) -> str:
        return _COMPACT.encode(self.to_dict())

    @property
    def is_plain(self) -> bool:
        """True when no job option asks for scheduling (queue, restarts, recurrence, stream)."""
        return not (self.queue or self.max_restart or self.recurring_period or self.stream)


def json_depth_ok(raw: bytes, limit: int) -> bool:
    """Cheap pre-parse check that JSON nesting stays under ``limit``.

    Counts brackets outside strings; runs in C-speed chunks for the common shallow case.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True
    depth = 0
    in_str = False
    esc = False
    for b in raw:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif b in (0x5D, 0x7D):
            depth -= 1
    return True


#: commands larger than this are not searched for their id (Redis allows 512 MB values)
_ID_SCAN_LIMIT = 64 << 20
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def recover_id(raw: bytes) -> str | None:
    """Find the top-level ``"id"`` string of a command that failed to parse (bad shape, broken
    JSON, over the size limit), wherever it stands among the top-level keys.

    Valid JSON is parsed by the C decoder; broken JSON is tokenized (strings, brackets,
    commas, colons: a regular expression does the scanning) so that only a key at nesting
    depth 1 counts and an ``id`` inside ``arguments`` is never mistaken for the command's
    id. Returns None when there is no valid id (then the command goes to the dead letters).
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > _ID_SCAN_LIMIT:
        raw = raw[:_ID_SCAN_LIMIT]
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        return _scan_id(raw)
    if isinstance(doc, dict):
        value = doc.get("id")
        if isinstance(value, str) and ID_PATTERN.fullmatch(value):
            return value
    return None


def _scan_id(data: bytes) -> str | None:
    depth = 0
    expect_key = False
    key: bytes | None = None  # a depth-1 key waiting for its colon / value
    want_value = False
    for m in _TOKEN.finditer(data):
        tok = m.group()
        if want_value:
            want_value = False
            if tok[:1] == b'"':
                try:
                    value = json.loads(tok)
                except ValueError:
                    return None
                if isinstance(value, str) and ID_PATTERN.fullmatch(value):
                    return value
            return None
        c = tok[:1]
        if c == b'"':
            key = tok if depth == 1 and expect_key else None
            expect_key = False
        elif c == b":":
            if key is not None and key == b'"id"':
                want_value = True
            key = None
        elif c in (b"{", b"["):
            depth += 1
            expect_key = c == b"{" and depth == 1
            key = None
        elif c in (b"}", b"]"):
            depth -= 1
            key = None
        elif c == b",":
            expect_key = depth == 1
            key = None
    return None


def _opt_int(d: dict[str, Any], name: str, minimum: int = 0) -> int | None:
    v = d.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"{name}: expected an integer, got {type(v).__name__}", name)
    if v < minimum:
        raise ProtocolError(f"{name}: must be >= {minimum}", name)
    if v > 10**9:
        raise ProtocolError(f"{name}: too large", name)
    return v


def decode_command(raw: bytes | str, max_bytes: int = DEFAULT_MAX_COMMAND_BYTES,
                   *, internal: bool = False) -> Command:
    """Parse and check one command. Raises ProtocolError naming the bad field.

    Strict: unknown top-level fields are refused, types are never coerced, ``null`` means
    "not set" for every optional field (0-core's clients send every field). ``internal``
    allows the reserved id prefixes (core0 re-reading its own jobs from the state dir).
    """
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    if len(raw) > max_bytes:
        raise ProtocolError(
            f"command is {len(raw)} bytes, larger than the {max_bytes} byte limit",
            None,
            Code.TOO_LARGE,
        )
    if not json_depth_ok(raw, MAX_DEPTH):
        raise ProtocolError(f"command nesting deeper than {MAX_DEPTH}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"command is not valid UTF-8 (byte {e.start})") from None
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise ProtocolError("command nesting too deep") from None
    except ValueError as e:
        raise ProtocolError(f"command is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"command must be a JSON object, got {type(obj).__name__}")
    if not obj.keys() <= _COMMAND_FIELDS:
        unknown = sorted(set(obj) - _COMMAND_FIELDS)
        raise ProtocolError(f"unknown field {unknown[0]!r} in command", unknown[0])
    get = obj.get
    cid = get("id")
    if not isinstance(cid, str) or not ID_PATTERN.fullmatch(cid):
        raise ProtocolError("id: must be a string matching [A-Za-z0-9_.:-]{1,128}", "id")
    if not internal and cid.startswith(RESERVED_ID_PREFIXES):
        raise ProtocolError(f"id: the prefixes {', '.join(RESERVED_ID_PREFIXES)} are reserved "
                            "for core0's own jobs", "id")
    name = get("command")
    if not isinstance(name, str) or not name:
        raise ProtocolError("command: must be a non-empty string", "command")
    args = get("arguments")
    if args is None:
        args = {}
    elif not isinstance(args, dict):
        raise ProtocolError(
            f"arguments: expected an object, got {type(args).__name__}", "arguments"
        )
    if len(obj) <= 3 and "arguments" in obj or len(obj) <= 2:
        # id, command (and arguments): nothing else to check (the common short form)
        return Command(command=name, arguments=args, id=cid)
    queue = get("queue")
    if queue is not None and (not isinstance(queue, str) or not ID_PATTERN.fullmatch(queue)):
        raise ProtocolError("queue: must be a string matching [A-Za-z0-9_.:-]{1,128}", "queue")
    stream = get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise ProtocolError(f"stream: expected a boolean, got {type(stream).__name__}", "stream")
    tags = get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ProtocolError("tags: expected a list of strings", "tags")
        if len(tags) > 64 or any(len(t) > 256 for t in tags):
            raise ProtocolError("tags: at most 64 tags of at most 256 characters", "tags")
    _opt_int(obj, "stats_interval")  # 0-core's clients send it: checked, then ignored
    levels = get("log_levels")
    if levels is not None and not isinstance(levels, list):
        raise ProtocolError("log_levels: expected a list", "log_levels")
    return Command(
        id=cid,
        command=name,
        arguments=args,
        queue=queue,
        # 0 means "not set", as 0-core's Go client sends it
        max_time=_opt_int(obj, "max_time") or None,
        max_restart=_opt_int(obj, "max_restart") or None,
        recurring_period=_opt_int(obj, "recurring_period") or None,
        stream=stream,
        tags=tags,
    )


def _plain_ints(*values: Any) -> bool:
    for v in values:
        if type(v) is not int:
            return False
    return True


def _str_list(v: Any) -> bool:
    if type(v) is not list:
        return False
    for x in v:
        if type(x) is not str:
            return False
    return True


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Result:
    """A job result, as written to ``result:<id>``.

    ``data`` is a string; when ``level`` is 20 it holds JSON (use :meth:`json`).
    ``streams`` holds the tails of stdout and stderr.
    """

    id: str
    command: str
    state: State
    code: int = 0
    data: str = ""
    level: int = 0
    streams: list[str] = field(default_factory=lambda: ["", ""])
    critical: str = ""
    starttime: int = 0
    time: int = 0
    tags: list[str] | None = None
    container: int = 0
    run: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "command": self.command,
            "data": self.data,
            "level": self.level,
            "streams": self.streams,
            "critical": self.critical,
            "state": self.state.value,
            "code": self.code,
            "starttime": self.starttime,
            "time": self.time,
            "tags": self.tags,
            "container": self.container,
        }
        if self.run is not None:
            d["run"] = self.run
        return d

    def to_json(self) -> str:
        """The wire form: exactly ``json.dumps(self.to_dict(), separators=(",", ":"))``.

        Every command's result goes through here on the dispatcher's hot path, so the usual
        shape (strings, ints, a list of strings) is laid out with the json module's own C
        string encoder: a third of the time of the generic encoder for the same bytes
        (docs/performance.md, "The inline path"); anything unusual takes the generic one."""
        t, st, lv = self.tags, self.streams, self.level
        if (type(lv) is int or type(lv) is Level) and _plain_ints(
                self.code, self.starttime, self.time, self.container) \
                and (self.run is None or type(self.run) is int) and type(self.data) is str \
                and type(self.id) is str and type(self.command) is str \
                and type(self.critical) is str and _str_list(st) \
                and (t is None or _str_list(t)):
            q = _quote
            return (f'{{"id":{q(self.id)},"command":{q(self.command)},"data":{q(self.data)},'
                    f'"level":{int(lv)},"streams":[{",".join(map(q, st))}],'
                    f'"critical":{q(self.critical)},"state":{q(self.state.value)},'
                    f'"code":{self.code},"starttime":{self.starttime},"time":{self.time},'
                    f'"tags":{"null" if t is None else "[" + ",".join(map(q, t)) + "]"},'
                    f'"container":{self.container}'
                    + ("}" if self.run is None else f',"run":{self.run}}}'))
        return _COMPACT.encode(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        streams = d.get("streams") or ["", ""]
        return cls(
            id=d.get("id", ""),
            command=d.get("command", ""),
            state=State.parse(d.get("state", "ERROR")),
            code=int(d.get("code") or 0),
            data=d.get("data") or "",
            level=int(d.get("level") or 0),
            streams=[streams[0] if streams else "", streams[1] if len(streams) > 1 else ""],
            critical=d.get("critical") or "",
            starttime=int(d.get("starttime") or 0),
            time=int(d.get("time") or 0),
            tags=d.get("tags"),
            container=int(d.get("container") or 0),
            run=d.get("run"),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Result:
        return cls.from_dict(json.loads(raw))

    @property
    def stdout(self) -> str:
        return self.streams[0]

    @property
    def stderr(self) -> str:
        return self.streams[1]

    def json(self) -> Any:
        """The decoded ``data`` of a level-20 result."""
        return json.loads(self.data) if self.data else None

    @property
    def ok(self) -> bool:
        return self.state is State.SUCCESS


@dataclass(frozen=True)
class LogRecord:
    """One output message, in 0-core's stream record format."""

    job: str
    level: int
    message: str
    flags: int = 0
    epoch: int = 0  # nanoseconds
    core: int = 0  # container id, 0 = host

    @property
    def meta(self) -> int:
        return ((self.level & 0xFFFF) << 16) | (self.flags & 0xFFFF)

    @property
    def eof(self) -> bool:
        return bool(self.flags & FLAGS_EOF)

    def to_dict(self) -> dict[str, Any]:
        return {
            "core": self.core,
            "command": self.job,
            "message": {"message": self.message, "epoch": self.epoch, "meta": self.meta},
        }

    def to_json(self) -> str:
        return _COMPACT.encode(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogRecord:
        msg = d.get("message") or {}
        meta = int(msg.get("meta") or 0)
        return cls(
            job=d.get("command", ""),
            level=(meta >> 16) & 0xFFFF,
            flags=meta & 0xFFFF,
            message=msg.get("message", ""),
            epoch=int(msg.get("epoch") or 0),
            core=int(d.get("core") or 0),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> LogRecord:
        return cls.from_dict(json.loads(raw))
