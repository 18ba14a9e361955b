"""core0ctl: drive a core0 (or 0-core) node from a shell.

    core0ctl ping
    core0ctl system -- ls -l /
    core0ctl --stream system -- sh -c 'for i in 1 2 3; do echo $i; sleep 1; done'
    core0ctl info cpu --json
    core0ctl job list
    core0ctl raw core.system '{"name": "uname", "args": ["-a"]}'
    core0ctl disk list                 # any command: <domain> <action> [key=value ...]
    core0ctl zfs create name=tank/data # values are JSON when they parse, strings otherwise
    core0ctl nodes                     # a fleet on a shared Redis: its registered nodes
    core0ctl --node-tags web ping      # fan-out: --nodes a,b,c | --node-tags t (fleetcli)
    core0ctl container create busybox hostname=web   # prints the new container's id
    core0ctl container list            # also: get, find, terminate ID, nic-add, image list …
    core0ctl container exec 3 -- ls -l /   # a program inside container 3 (its exit status)
    core0ctl container bash 3 'echo $HOSTNAME'
    core0ctl kvm list                  # VMs (kvmcli): create NAME --disk … , destroy NAME …

Connection: --url (or CORE0_URL): redis://user:pass@host:port/, rediss://user:pass@host:port/
?ca=ca.pem[&cert=..&key=..] (TLS), unix:///path/to/redis.sock; or --host/--port (or --socket),
--password, --user, --tls, --tls-ca; defaults from CORE0_HOST, CORE0_PORT, CORE0_SOCKET,
CORE0_PASSWORD, CORE0_USER, CORE0_PREFIX, CORE0_QUEUE. Flags win over the URL.
--timeout bounds every call (connect, send, read) and the wait for a result.
Exit status: 0 on SUCCESS; for ``system``/``bash`` the program's own exit status; 1 for an
error result or an unreachable node (the message goes to stderr), 2 for usage errors (also
a 400 "bad request" result: the node refused the arguments) and replies that break the
protocol, 3 for a timeout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, NoReturn

from core0_client import kvmcli
from core0_client._base import error_message
from core0_client.container import ContainerClient
from core0_client.errors import (
    ConnectionError,
    Core0Error,
    ProtocolError,
    ResultError,
    TimeoutError,
)
from core0_client.protocol import Code, Level, Result, State
from core0_client.replies import result_data
from core0_client.sync import Client, Response
from core0_client.url import Endpoint, URLError, parse_url


class UsageError(Exception):
    """A bad command line: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see core0ctl --help)")


def _timeout(text: str) -> float:
    v = float(text)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(text)
    return v


def _parser(words: bool = True) -> argparse.ArgumentParser:
    ap = _Parser(
        prog="core0ctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=words,
    )
    env = os.environ
    ap.add_argument("--url", default=env.get("CORE0_URL"),
                    help="redis://user:pass@host:port/, rediss://…?ca=…, unix:///path")
    ap.add_argument("--host", help="node address (CORE0_HOST, default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="node Redis port (CORE0_PORT, default 6379)")
    ap.add_argument("--socket", help="redis unix socket (CORE0_SOCKET)")
    ap.add_argument("--password", default=env.get("CORE0_PASSWORD"))
    ap.add_argument("--user", default=env.get("CORE0_USER"), help="Redis ACL user")
    ap.add_argument("--tls", action="store_true", help="connect with TLS")
    ap.add_argument("--tls-ca", help="CA certificate to verify the node")
    ap.add_argument("--tls-cert", help="client certificate")
    ap.add_argument("--tls-key", help="client key")
    ap.add_argument("--insecure", action="store_true", help="TLS without verification")
    ap.add_argument("--prefix", default=env.get("CORE0_PREFIX", ""), help="node key prefix")
    ap.add_argument("--queue", default=env.get("CORE0_QUEUE", "default"))
    ap.add_argument("--timeout", type=_timeout, default=60.0,
                    help="seconds allowed for each call and to wait for a result")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ap.add_argument("--stream", action="store_true", help="show output live")
    ap.add_argument("--id", help="job id to use")
    ap.add_argument("--async", dest="no_wait", action="store_true",
                    help="submit and print the job id, do not wait")
    ap.add_argument("--max-time", type=int, help="kill the job after this many seconds")
    ap.add_argument("--queue-name", help="named sequential job queue")
    ap.add_argument("--recurring", type=int, help="run every N seconds")
    ap.add_argument("--tags", help="comma-separated tags")
    ap.add_argument("--nodes", help="fleet: run on these registered nodes (comma-separated ids)")
    ap.add_argument("--node-tags", help="fleet: run on the nodes carrying all these tags")
    ap.add_argument("--cluster", action="store_true",
                    help="fleet: the Redis is a Redis Cluster (the URL names any of its nodes)")
    if words:
        ap.add_argument("words", nargs=argparse.REMAINDER, help="command and its arguments")
    return ap


def _endpoint(ns: argparse.Namespace) -> Endpoint:
    """Flags win over CORE0_URL/--url, which wins over CORE0_HOST/PORT/SOCKET."""
    env = os.environ
    explicit = ns.host is not None or ns.port is not None or ns.socket is not None or ns.tls
    if ns.url and not explicit:
        ep = parse_url(ns.url)
        if ns.user or ns.password:
            ep = Endpoint(**{**ep.__dict__, "username": ns.user or ep.username,
                             "password": ns.password or ep.password})
        if ns.tls_ca or ns.tls_cert or ns.insecure:
            ep = Endpoint(**{**ep.__dict__, "ca": ns.tls_ca or ep.ca,
                             "cert": ns.tls_cert or ep.cert, "key": ns.tls_key or ep.key,
                             "verify": ep.verify and not ns.insecure})
        return ep
    port_text = env.get("CORE0_PORT", "6379")
    if ns.port is None and not port_text.isdigit():
        raise UsageError(f"CORE0_PORT: not a port number: {port_text[:32]!r}")
    socket_path = ns.socket if ns.socket is not None else (
        None if ns.host is not None or ns.port is not None else env.get("CORE0_SOCKET"))
    return Endpoint(
        host=ns.host or env.get("CORE0_HOST", "127.0.0.1"),
        port=ns.port if ns.port is not None else int(port_text),
        unix_socket_path=socket_path or None, username=ns.user, password=ns.password,
        tls=ns.tls, ca=ns.tls_ca, cert=ns.tls_cert, key=ns.tls_key, verify=not ns.insecure)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _kv(words: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise UsageError(f"expected key=value, got {w!r}")
        out[k] = _value(v)
    return out


def _print_data(res: Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    if res.level == Level.RESULT_JSON and res.data:
        data = result_data(res)
        if isinstance(data, str):
            print(data)
        else:
            print(json.dumps(data, indent=2))
    elif res.data:
        print(res.data)


def _finish(ns: argparse.Namespace, resp: Response, process: bool = False) -> int:
    if ns.no_wait:
        print(resp.id)
        return 0
    if ns.stream:
        resp.stream(timeout=ns.timeout)
    res = resp.get(ns.timeout)
    if ns.json:
        _print_data(res, True)
    elif process:
        if not ns.stream:
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
        if res.level == Level.RESULT_JSON and res.data:
            print(res.data)
    else:
        if res.state is State.SUCCESS:
            _print_data(res, False)
    if res.state is not State.SUCCESS:
        msg = error_message(res)
        if not (process and res.code >= Code.PROCESS and not res.critical):
            print(f"core0ctl: {res.state.value} ({res.code}): {_line(msg)}", file=sys.stderr)
        if process and res.code >= Code.PROCESS:
            status = res.code - Code.PROCESS
            if not ns.json and not ns.stream:
                print(f"exit code {status}", file=sys.stderr)
            return status if 0 <= status < 256 else 1
        return 2 if res.code == Code.BAD_REQUEST else 1  # the node says: bad input
    return 0


def _line(text: object) -> str:
    """One line of at most 500 characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= 500 else s[:500] + "…"


def _fail(status: int, msg: object) -> NoReturn:
    print(f"core0ctl: {_line(msg)}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 on success, 1 on an error result or an unreachable node, 2 on a
    bad command line or a reply that breaks the protocol, 3 on a timeout."""
    try:
        ns, words = _args(argv)
    except UsageError as e:
        _fail(2, e)
    if not words:
        _fail(2, "a command is expected (see core0ctl --help)")
    client: Client | None = None
    try:
        opts: dict[str, Any] = {
            "id": ns.id, "max_time": ns.max_time, "queue": ns.queue_name,
            "recurring_period": ns.recurring, "stream": ns.stream,
            "tags": ns.tags.split(",") if ns.tags else None,
        }
        if words == ["nodes"] or ns.nodes or ns.node_tags:  # the fleet on a shared Redis
            from core0_client import fleetcli

            try:
                status = fleetcli.run(ns, _endpoint(ns), words, opts)
            except fleetcli.FleetUsageError as e:
                raise UsageError(str(e)) from None
            sys.exit(status)
        client = _client(ns)
        status = _run(ns, client, words, opts)
    except (UsageError, URLError) as e:
        _fail(2, e)
    except TimeoutError as e:
        _fail(3, f"timeout: {e}")
    except ProtocolError as e:
        _fail(2, f"protocol error: {e}")
    except ConnectionError as e:
        _fail(1, f"cannot reach the node: {e}")
    except (ResultError, Core0Error) as e:
        _fail(1, e)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    except (OSError, ValueError, TypeError) as e:  # local files, bad values: no traceback
        _fail(2 if isinstance(e, ValueError | TypeError) else 1, e)
    finally:
        if client is not None:
            client.close()
    sys.exit(status)


def _args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    ns = _parser().parse_args(argv)
    words = list(ns.words)
    if words and words[0] == "--":
        words = words[1:]
    # global options may also follow the command (`core0ctl info cpu --json`), up to a `--`
    cut = words.index("--") if "--" in words else len(words)
    _, rest = _parser(words=False).parse_known_args(words[:cut], namespace=ns)
    return ns, rest + words[cut:]


def _client(ns: argparse.Namespace) -> Client:
    ep = _endpoint(ns)
    return Client(ep.host, ep.port, password=ep.password, unix_socket_path=ep.unix_socket_path,
                  ssl=ep.tls, username=ep.username, ssl_ca_certs=ep.ca, ssl_certfile=ep.cert,
                  ssl_keyfile=ep.key, ssl_verify=ep.verify, timeout=ns.timeout,
                  prefix=ns.prefix, queue=ns.queue)


def _run(ns: argparse.Namespace, c: Client, words: list[str], opts: dict[str, Any]) -> int:
    head, rest = words[0], words[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if head == "ping":
        print(c.ping())
        return 0
    if head == "system":
        cwd, env, stdin, rest = _system_opts("system", rest)
        return _finish(ns, c.system(rest, dir=cwd, stdin=stdin, env=env or None, **opts), True)
    if head == "container" and rest and rest[0] in ("exec", "bash"):
        return _container_run(ns, c, rest, opts)
    if head == "kvm" and rest and rest[0] in kvmcli.VERBS:
        try:
            return kvmcli.run(ns, c, rest, opts, _finish, _kv)
        except kvmcli.KvmUsageError as e:
            raise UsageError(str(e)) from None
    if head == "bash":
        if not rest:
            raise UsageError("bash: script missing (core0ctl bash SCRIPT)")
        return _finish(ns, c.bash(" ".join(rest), **opts), True)
    if head == "raw":
        if not rest:
            raise UsageError("raw: COMMAND [JSON-ARGS] expected")
        if len(rest) > 2:
            raise UsageError("raw: COMMAND [JSON-ARGS]: quote the JSON as one argument")
        args = _json_args(rest[1]) if len(rest) > 1 else {}
        ns.json = True
        return _finish(ns, c.raw(rest[0], args, **opts))
    if head in ("result", "stream") and len(rest) != 1:
        raise UsageError(f"{head}: JOB-ID expected (core0ctl {head} JOB-ID)")
    if head == "result":
        res = c.response_for(rest[0]).get(ns.timeout)
        _print_data(res, True)
        return 0 if res.state is State.SUCCESS else 1
    if head == "stream":
        c.response_for(rest[0]).stream(timeout=ns.timeout)
        return 0
    if head == "commands":
        for spec in c.commands():
            if not isinstance(spec, dict):
                raise ProtocolError("core.commands: expected a list of objects")
            doc = str(spec.get("doc") or "").splitlines() or [""]
            print(f"{spec.get('name', '?')!s:32} {spec.get('role', '?')!s:10} {doc[0]}")
        return 0
    # generic: <domain> <action> [key=value ...]  or  <domain.action> [key=value ...]
    if "." in head:
        command, kv = head, rest
    elif rest:
        command, kv = f"{head}.{rest[0]}", rest[1:]
    else:
        raise UsageError(f"unknown command {head!r} (see core0ctl commands)")
    positional = [w for w in kv if "=" not in w]
    args = _kv([w for w in kv if "=" in w])
    if positional:
        # a lone positional is the first required argument (e.g. `job kill <id>`)
        spec = next((s for s in c.commands() if isinstance(s, dict) and s.get("name") == command),
                    None)
        if spec is None:
            raise UsageError(f"unknown command {command!r} (see core0ctl commands)")
        schema = spec.get("arguments")
        if not isinstance(schema, dict):
            raise ProtocolError(f"core.commands: no argument schema for {command}")
        req = schema.get("required") or list(schema.get("properties") or [])
        for name, w in zip(req, positional, strict=False):
            args[name] = _value(w)
    return _finish(ns, c.raw(command, args, **opts))


def _system_opts(what: str, rest: list[str]) -> tuple[str, dict[str, str], str, list[str]]:
    """(dir, env, stdin, argv) of ``[--dir=D] [--env=K=V]… [--stdin] [--] PROGRAM [ARGS]``."""
    env: dict[str, str] = {}
    cwd, stdin = "", ""
    rest = list(rest)
    while rest and rest[0].startswith("--") and rest[0] != "--":
        flag = rest.pop(0)
        if flag.startswith("--dir="):
            cwd = flag[6:]
        elif flag.startswith("--env="):
            k, _, v = flag[6:].partition("=")
            env[k] = v
        elif flag == "--stdin":
            stdin = sys.stdin.read()
        else:
            raise UsageError(f"{what}: unknown option {flag}")
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        raise UsageError(f"{what}: nothing to run (core0ctl {what} -- PROGRAM [ARGS])")
    return cwd, env, stdin, rest


def _container_run(ns: argparse.Namespace, c: Client, rest: list[str],
                   opts: dict[str, Any]) -> int:
    """``container exec ID [--dir=…] [--env=K=V] -- PROGRAM [ARGS]`` and ``container bash ID
    SCRIPT``: the command runs inside the container (corex.dispatch); the exit status is
    the program's, as for ``system``/``bash``."""
    verb, words = rest[0], rest[1:]
    if not words or not words[0].isdigit():
        raise UsageError(f"container {verb}: container id expected "
                         f"(core0ctl container {verb} ID …)")
    inside = ContainerClient(c, int(words[0]))
    words = words[1:]
    if verb == "bash":
        if words and words[0] == "--":
            words = words[1:]
        if not words:
            raise UsageError("container bash: script missing (core0ctl container bash ID SCRIPT)")
        return _finish(ns, inside.bash(" ".join(words), **opts), True)
    cwd, env, stdin, argv = _system_opts("container exec", words)
    return _finish(ns, inside.system(argv, dir=cwd, stdin=stdin, env=env or None, **opts), True)


def _json_args(text: str) -> dict[str, Any]:
    try:
        args = json.loads(text)
    except RecursionError:
        raise UsageError("raw: JSON-ARGS nested too deeply") from None
    except ValueError as e:
        raise UsageError(f"raw: JSON-ARGS is not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise UsageError(f"raw: JSON-ARGS must be a JSON object, got {type(args).__name__}")
    return args


if __name__ == "__main__":
    main()
