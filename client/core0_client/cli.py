"""core0ctl: drive a core0 (or 0-core) node from a shell.

    core0ctl ping
    core0ctl system -- ls -l /
    core0ctl --stream system -- sh -c 'for i in 1 2 3; do echo $i; sleep 1; done'
    core0ctl info cpu --json
    core0ctl job list
    core0ctl raw core.system '{"name": "uname", "args": ["-a"]}'
    core0ctl disk list                 # any command: <domain> <action> [key=value ...]
    core0ctl zfs create name=tank/data # values are JSON when they parse, strings otherwise

Connection: --host/--port (or --socket), --password, --user, --tls; defaults from CORE0_HOST,
CORE0_PORT, CORE0_SOCKET, CORE0_PASSWORD, CORE0_USER, CORE0_PREFIX.
Exit status: 0 on SUCCESS; for ``system``/``bash`` the program's own exit status; 1 for an
error result (the message goes to stderr), 2 for usage errors, 3 for a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from core0_client.errors import Core0Error, JobNotFoundError, ResultError, TimeoutError
from core0_client.protocol import Code, Level, Result, State
from core0_client.sync import Client, Response


def _parser(words: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="core0ctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=words,
    )
    env = os.environ
    ap.add_argument("--host", default=env.get("CORE0_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(env.get("CORE0_PORT", "6379")))
    ap.add_argument("--socket", default=env.get("CORE0_SOCKET"), help="redis unix socket")
    ap.add_argument("--password", default=env.get("CORE0_PASSWORD"))
    ap.add_argument("--user", default=env.get("CORE0_USER"), help="Redis ACL user")
    ap.add_argument("--tls", action="store_true", help="connect with TLS")
    ap.add_argument("--tls-ca", help="CA certificate to verify the node")
    ap.add_argument("--tls-cert", help="client certificate")
    ap.add_argument("--tls-key", help="client key")
    ap.add_argument("--insecure", action="store_true", help="TLS without verification")
    ap.add_argument("--prefix", default=env.get("CORE0_PREFIX", ""), help="node key prefix")
    ap.add_argument("--queue", default=env.get("CORE0_QUEUE", "default"))
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a result")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON")
    ap.add_argument("--stream", action="store_true", help="show output live")
    ap.add_argument("--id", help="job id to use")
    ap.add_argument("--async", dest="no_wait", action="store_true",
                    help="submit and print the job id, do not wait")
    ap.add_argument("--max-time", type=int, help="kill the job after this many seconds")
    ap.add_argument("--queue-name", help="named sequential job queue")
    ap.add_argument("--recurring", type=int, help="run every N seconds")
    ap.add_argument("--tags", help="comma-separated tags")
    if words:
        ap.add_argument("words", nargs=argparse.REMAINDER, help="command and its arguments")
    return ap


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _kv(words: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise SystemExit(f"core0ctl: expected key=value, got {w!r}")
        out[k] = _value(v)
    return out


def _print_data(res: Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    if res.level == Level.RESULT_JSON and res.data:
        data = json.loads(res.data)
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
        msg = res.critical or res.data
        if res.level == Level.RESULT_JSON and res.data:
            try:
                d = json.loads(res.data)
                msg = d if isinstance(d, str) else msg
            except ValueError:
                pass
        if not (process and res.code >= Code.PROCESS and not res.critical):
            print(f"core0ctl: {res.state.value} ({res.code}): {msg}", file=sys.stderr)
        if process and res.code >= Code.PROCESS:
            status = res.code - Code.PROCESS
            if not ns.json and not ns.stream:
                print(f"exit code {status}", file=sys.stderr)
            return status if status < 256 else 1
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    ns = _parser().parse_args(argv)
    words = list(ns.words)
    if words and words[0] == "--":
        words = words[1:]
    # global options may also follow the command (`core0ctl info cpu --json`), up to a `--`
    cut = words.index("--") if "--" in words else len(words)
    _, rest = _parser(words=False).parse_known_args(words[:cut], namespace=ns)
    words = rest + words[cut:]
    if not words:
        _parser().print_help()
        sys.exit(2)
    client = Client(
        ns.host, ns.port, password=ns.password, unix_socket_path=ns.socket, ssl=ns.tls,
        username=ns.user, ssl_ca_certs=ns.tls_ca, ssl_certfile=ns.tls_cert,
        ssl_keyfile=ns.tls_key, ssl_verify=not ns.insecure, timeout=ns.timeout,
        prefix=ns.prefix, queue=ns.queue,
    )
    opts: dict[str, Any] = {
        "id": ns.id, "max_time": ns.max_time, "queue": ns.queue_name,
        "recurring_period": ns.recurring, "stream": ns.stream,
        "tags": ns.tags.split(",") if ns.tags else None,
    }
    try:
        sys.exit(_run(ns, client, words, opts))
    except TimeoutError as e:
        print(f"core0ctl: timeout: {e}", file=sys.stderr)
        sys.exit(3)
    except (ResultError, JobNotFoundError, Core0Error) as e:
        print(f"core0ctl: {e}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(0)
    except (ConnectionError, OSError) as e:
        print(f"core0ctl: cannot reach the node: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        client.close()


def _run(ns: argparse.Namespace, c: Client, words: list[str], opts: dict[str, Any]) -> int:
    head, rest = words[0], words[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if head == "ping":
        print(c.ping())
        return 0
    if head == "system":
        env: dict[str, str] = {}
        cwd, stdin = "", ""
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
                raise SystemExit(f"core0ctl system: unknown option {flag}")
        if rest and rest[0] == "--":
            rest = rest[1:]
        if not rest:
            raise SystemExit("core0ctl system: nothing to run")
        return _finish(ns, c.system(rest, dir=cwd, stdin=stdin, env=env or None, **opts), True)
    if head == "bash":
        if not rest:
            raise SystemExit("core0ctl bash: script missing")
        return _finish(ns, c.bash(" ".join(rest), **opts), True)
    if head == "raw":
        if not rest:
            raise SystemExit("core0ctl raw: COMMAND [JSON-ARGS]")
        args = json.loads(rest[1]) if len(rest) > 1 else {}
        ns.json = True
        return _finish(ns, c.raw(rest[0], args, **opts))
    if head == "result":
        res = c.response_for(rest[0]).get(ns.timeout)
        _print_data(res, True)
        return 0 if res.state is State.SUCCESS else 1
    if head == "stream":
        c.response_for(rest[0]).stream(timeout=ns.timeout)
        return 0
    if head == "commands":
        for spec in c.commands():
            print(f"{spec['name']:32} {spec['role']:10} {spec['doc'].splitlines()[0]}")
        return 0
    # generic: <domain> <action> [key=value ...]  or  <domain.action> [key=value ...]
    if "." in head:
        command, kv = head, rest
    elif rest:
        command, kv = f"{head}.{rest[0]}", rest[1:]
    else:
        raise SystemExit(f"core0ctl: unknown command {head!r} (see core0ctl commands)")
    positional = [w for w in kv if "=" not in w]
    args = _kv([w for w in kv if "=" in w])
    if positional:
        # a lone positional is the first required argument (e.g. `job kill <id>`)
        spec = next((s for s in c.commands() if s["name"] == command), None)
        if spec is None:
            raise SystemExit(f"core0ctl: unknown command {command!r}")
        req = spec["arguments"].get("required") or list(spec["arguments"]["properties"])
        for name, w in zip(req, positional, strict=False):
            args[name] = _value(w)
    return _finish(ns, c.raw(command, args, **opts))


if __name__ == "__main__":
    main()
