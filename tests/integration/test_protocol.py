"""Protocol conformance, written against raw Redis commands (not the client).

Each test speaks 0-core's wire protocol as 0-core's clients and redis-cli scripts do:
RPUSH core:default, BRPOPLPUSH result:<id>:flag / result:<id>, BLPOP stream:<id>.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from core0_client.protocol import FLAG_EOF_ERROR, FLAG_EOF_SUCCESS, LogRecord
from wire import cmd, keys_without_ttl, push, result, run, wait_for


@pytest.fixture
def r(node):  # type: ignore[no-untyped-def]
    c = node.redis()
    yield c
    c.close()


def test_redis_cli_exchange_verbatim(r) -> None:
    jid = f"a1-{uuid.uuid4().hex[:8]}"
    r.rpush("core:default", json.dumps(
        {"id": jid, "command": "core.system", "arguments": {"name": "echo", "args": ["hi"]}}))
    res = result(r, jid, 5)
    assert res["state"] == "SUCCESS"
    assert res["streams"][0] == "hi\n"
    assert res["code"] == 0
    for field in ("id", "command", "data", "level", "streams", "critical", "state", "code",
                  "starttime", "time", "tags", "container"):
        assert field in res


def test_zero_core_client_shape_with_nulls(r) -> None:
    """0-core's Python client sends every optional field, null when unset."""
    c = {"id": str(uuid.uuid4()), "command": "core.system",
         "arguments": {"name": "echo", "args": ["x"], "dir": "", "stdin": "", "env": None},
         "queue": None, "max_time": None, "max_restart": None, "recurring_period": None,
         "stream": False, "tags": None, "stats_interval": None, "log_levels": None}
    res = result(r, push(r, c))
    assert res["state"] == "SUCCESS", res
    assert res["streams"][0] == "x\n"


def test_flag_at_pickup_and_ttl_minus_one_while_running(r) -> None:
    jid = push(r, cmd("core.system", {"name": "sleep", "args": ["1.5"]}))
    # 0-core clients block on the flag to learn the job was taken
    assert r.brpoplpush(f"result:{jid}:flag", f"result:{jid}:flag", 5) is not None
    assert r.ttl(f"result:{jid}:flag") == -1  # "running"
    assert not r.exists(f"result:{jid}")
    res = result(r, jid, 10)
    assert res["state"] == "SUCCESS"
    assert 0 < r.ttl(f"result:{jid}:flag") <= 300
    assert 0 < r.ttl(f"result:{jid}") <= 300


def test_result_rereadable_until_ttl(r) -> None:
    res1 = run(r, "core.ping")
    jid = res1["id"]
    for _ in range(3):
        assert result(r, jid, 1) == res1
    assert r.llen(f"result:{jid}") == 1


def test_builtin_result_is_level_20_json(r) -> None:
    res = run(r, "core.ping")
    assert res["level"] == 20
    assert json.loads(res["data"]).startswith("PONG ")


def test_unknown_command(r) -> None:
    res = run(r, "no.such.command")
    assert res["state"] == "UNKNOWN_CMD"
    assert "no.such.command" in json.loads(res["data"])


def test_bad_arguments_name_the_field(r) -> None:
    res = run(r, "core.system", {"name": "echo", "args": "notalist"})
    assert res["state"] == "ERROR" and res["code"] == 400
    assert "arguments.args" in json.loads(res["data"])
    res = run(r, "core.system", {"name": "echo", "bogus": 1})
    assert res["code"] == 400 and "arguments.bogus" in res["critical"]
    res = run(r, "core.system", {"name": 5})
    assert res["code"] == 400 and "arguments.name" in res["critical"]


def test_exit_status_codes(r) -> None:
    res = run(r, "core.system", {"name": "sh", "args": ["-c", "echo out; echo err >&2; exit 7"]})
    assert res["state"] == "ERROR"
    assert res["code"] == 1007
    assert res["streams"] == ["out\n", "err\n"]
    res = run(r, "core.system", {"name": "definitely-not-a-binary"})
    assert res["code"] == 404


def test_level_prefixes_and_json_block(r) -> None:
    script = ('echo plain; echo "3::public"; '
              'printf "20:::\\n{\\"a\\": [1, 2]}\\n:::\\n"; echo "9::boom"')
    res = run(r, "bash", {"script": script})
    assert res["state"] == "SUCCESS"
    assert res["level"] == 20 and json.loads(res["data"]) == {"a": [1, 2]}
    assert res["streams"][0] == "plain\n"
    assert res["critical"] == "boom"


def test_stream_list_records_and_eof(r) -> None:
    jid = push(r, cmd("core.system", {"name": "sh", "args": ["-c", "echo one; echo two >&2"]},
                      stream=True))
    records = []
    while True:
        item = r.blpop(f"stream:{jid}", 10)
        assert item is not None
        rec = json.loads(item[1])
        assert set(rec) == {"core", "command", "message"}
        assert set(rec["message"]) == {"message", "epoch", "meta"}
        records.append(LogRecord.from_dict(rec))
        if records[-1].eof:
            break
    assert [(x.level, x.message) for x in records[:-1]] == [(1, "one"), (2, "two")] or \
        sorted((x.level, x.message) for x in records[:-1]) == [(1, "one"), (2, "two")]
    assert records[-1].flags & FLAG_EOF_SUCCESS
    result(r, jid)


def test_stream_eof_error_flag(r) -> None:
    jid = push(r, cmd("core.system", {"name": "sh", "args": ["-c", "exit 3"]}, stream=True))
    result(r, jid)
    recs = [LogRecord.from_json(x) for x in r.lrange(f"stream:{jid}", 0, -1)]
    assert recs[-1].flags & FLAG_EOF_ERROR
    assert 0 < r.ttl(f"stream:{jid}") <= 60


def test_log_stream_many_readers(r) -> None:
    loop = "for i in 1 2 3; do echo $i; done"
    jid = push(r, cmd("core.system", {"name": "sh", "args": ["-c", loop]}))
    result(r, jid)
    for _ in range(3):  # non-destructive: every reader sees everything
        entries = r.xrange(f"log:{jid}")
        msgs = [LogRecord.from_json(f[b"record"]) for _, f in entries]
        assert [m.message for m in msgs if m.level == 1] == ["1", "2", "3"]
        assert msgs[-1].eof
    assert r.ttl(f"log:{jid}") > 0


def test_duplicate_id_never_runs_twice(r, tmp_path) -> None:
    """Proven by a marker file's lines: every copy would run on the same named queue (one at a
    time, in order), and a sentinel job pushed last appends its own line only after all of
    them — so its result comes after any copy that ran, and the file shows each run."""
    marker = tmp_path / "count"
    script = f"echo x >> {marker}; sleep 1"
    jid = str(uuid.uuid4())
    q = "dup-" + jid[:8]
    push(r, cmd("bash", {"script": script}, id=jid, queue=q))
    assert r.brpoplpush(f"result:{jid}:flag", f"result:{jid}:flag", 5) is not None
    # while it runs: the same id, with the same and with other (even bad) arguments
    push(r, cmd("bash", {"script": script}, id=jid, queue=q))
    push(r, cmd("core.ping", id=jid))
    push(r, cmd("core.system", {"bogus": 1}, id=jid))
    res = result(r, jid, 10)
    assert res["command"] == "bash" and res["state"] == "SUCCESS"
    # after it ended: still not again
    push(r, cmd("bash", {"script": script}, id=jid, queue=q))
    sentinel = run(r, "bash", {"script": f"echo sentinel >> {marker}"}, queue=q, timeout=15)
    assert sentinel["state"] == "SUCCESS"
    assert marker.read_text().splitlines() == ["x", "sentinel"]
    assert r.llen(f"result:{jid}") == 1
    assert r.llen("core:default:processing") == 0


def test_dead_letter_for_idless_garbage(r) -> None:
    before = int(r.hget("core0:stats", "dead_letters") or 0)
    r.rpush("core:default", b"\xff\xfe not json", json.dumps({"command": "core.ping"}))
    assert wait_for(lambda: int(r.hget("core0:stats", "dead_letters") or 0) >= before + 2, 5)
    dead = [json.loads(x) for x in r.lrange("core:default:dead", -2, -1)]
    assert {d["reason"][:10] for d in dead} and all("time" in d for d in dead)
    assert r.ttl("core:default:dead") > 0 and r.ttl("core0:stats") > 0


def test_tags_echoed(r) -> None:
    res = run(r, "core.ping", tags=["a", "b"])
    assert res["tags"] == ["a", "b"]


def test_max_time_timeout_kills_group(r) -> None:
    # the script waits for both sleeps: a result within 15 s means the whole group was killed
    res = run(r, "bash", {"script": "sleep 30 & sleep 30; wait"}, max_time=1, timeout=15)
    assert res["state"] == "TIMEOUT"


def test_job_kill_state_killed(r) -> None:
    jid = push(r, cmd("core.system", {"name": "sleep", "args": ["30"]}))
    r.brpoplpush(f"result:{jid}:flag", f"result:{jid}:flag", 5)
    k = run(r, "job.kill", {"id": jid})
    assert k["state"] == "SUCCESS"
    res = result(r, jid, 10)
    assert res["state"] == "KILLED"


def test_recurring_result_per_run(r) -> None:
    jid = push(r, cmd("core.system", {"name": "date", "args": ["+%s%N"]}, recurring_period=1))
    assert wait_for(lambda: r.exists(f"result:{jid}:2"), 10)
    one, two = (json.loads(r.lindex(f"result:{jid}:{n}", 0)) for n in (1, 2))
    assert one["run"] == 1 and two["run"] == 2 and one["streams"][0] != two["streams"][0]
    assert not r.exists(f"result:{jid}")
    assert r.ttl(f"result:{jid}:1") > 0
    assert run(r, "job.unschedule", {"id": jid})["state"] == "SUCCESS"
    final = result(r, jid, 10)
    assert final["state"] == "SUCCESS" and final["run"] >= 2


def test_max_restart(r, tmp_path) -> None:
    marker = tmp_path / "runs"
    res = run(r, "bash", {"script": f"echo x >> {marker}; exit 1"}, max_restart=2, timeout=15)
    assert res["state"] == "ERROR" and res["code"] == 1001
    assert marker.read_text().count("x") == 3


def test_named_queue_is_sequential(r, tmp_path) -> None:
    log = tmp_path / "order"
    script = "echo start{i} >> {log}; sleep 0.3; echo end{i} >> {log}"
    ids = [push(r, cmd("bash", {"script": script.format(i=i, log=log)},
                       queue="q1")) for i in range(3)]
    for jid in ids:
        assert result(r, jid, 15)["state"] == "SUCCESS"
    assert log.read_text().split() == ["start0", "end0", "start1", "end1", "start2", "end2"]


def test_env_dir_stdin(r, tmp_path) -> None:
    res = run(r, "core.system", {"name": "sh", "args": ["-c", "pwd; echo $FOO; cat"],
                                 "dir": str(tmp_path), "env": {"FOO": "bar"}, "stdin": "in\n"})
    assert res["streams"][0] == f"{tmp_path}\nbar\nin\n"


def test_every_key_has_ttl_after_jobs(r) -> None:
    for _ in range(3):
        run(r, "core.ping")
        run(r, "core.system", {"name": "true"}, stream=True)
    assert wait_for(lambda: not keys_without_ttl(r), 5), keys_without_ttl(r)


def test_processing_list_empty_after_work(r) -> None:
    for _ in range(5):
        run(r, "core.ping")
    assert wait_for(lambda: r.llen("core:default:processing") == 0, 5)


def test_children_get_clean_signal_state(r) -> None:
    res = run(
        r, "core.system", {"name": "grep", "args": ["-E", "^(SigBlk|SigIgn)", "/proc/self/status"]})
    lines = dict(line.split(":\t") for line in res["streams"][0].splitlines())
    assert int(lines["SigBlk"], 16) == 0 and int(lines["SigIgn"], 16) == 0


def test_job_runs_in_own_process_group(r) -> None:
    res = run(r, "bash", {"script": "ps -o pid=,pgid=,sid= -p $$"})
    pid, pgid, sid = res["streams"][0].split()
    assert pid == pgid == sid
    assert int(pid) != os.getpid()


@pytest.mark.parametrize("name,flag", [("true", FLAG_EOF_SUCCESS), ("false", FLAG_EOF_ERROR)])
def test_silent_job_log_ends_after_its_result(r, name, flag) -> None:
    """A process job that writes nothing gets its log:<id> EOF record one write after its
    result (creating the stream is off the result's path); a reader blocked on the log before
    the job ends wakes with it."""
    jid = push(r, cmd("core.system", {"name": "sh", "args": ["-c", f"sleep 0.3; {name}"]}))
    blocked = r.xread({f"log:{jid}": "0-0"}, block=5000)  # before the job ends
    assert blocked, "the reader of a silent job's log was not woken"
    res = result(r, jid)
    assert res["state"] == ("SUCCESS" if name == "true" else "ERROR")
    assert wait_for(lambda: r.xlen(f"log:{jid}") == 1, 2)
    (_, fields), = r.xrange(f"log:{jid}")
    rec = LogRecord.from_json(fields[b"record"])
    assert rec.eof and rec.flags & flag and rec.message == ""
    assert r.ttl(f"log:{jid}") > 0


def test_exec_failure_at_spawn_is_a_result(r, tmp_path) -> None:
    """A program the handler accepts but the kernel refuses to run (an executable file that
    is no program: ENOEXEC) gives the job an error result naming it; the next job runs."""
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00\x01not a program\n")
    junk.chmod(0o755)
    res = run(r, "core.system", {"name": str(junk)})
    assert res["state"] == "ERROR" and "junk" in res["data"] + res["streams"][1], res
    assert run(r, "core.system", {"name": "true"})["state"] == "SUCCESS"
    assert wait_for(lambda: r.llen("core:default:processing") == 0, 5)


def test_output_is_written_before_results_of_jobs_ending_together(r) -> None:
    """Jobs that end in the same pass of the reaper have their results sent from that turn,
    in one write: each one's output (and, for a job that wrote some, its EOF record) is in
    log:<id> and stream:<id> by the time its result can be read."""
    script = "for i in 1 2 3; do echo line$i; done; echo err >&2"
    ids = [push(r, cmd("core.system", {"name": "sh", "args": ["-c", script]}, stream=True))
           for _ in range(16)]
    for jid in ids:
        res = result(r, jid)
        assert res["state"] == "SUCCESS" and res["streams"] == ["line1\nline2\nline3\n", "err\n"]
        msgs = [LogRecord.from_json(f[b"record"]) for _, f in r.xrange(f"log:{jid}")]
        assert sorted(m.message for m in msgs if not m.eof) == ["err", "line1", "line2", "line3"]
        assert msgs[-1].eof and msgs[-1].flags & FLAG_EOF_SUCCESS
        streamed = [LogRecord.from_json(x) for x in r.lrange(f"stream:{jid}", 0, -1)]
        assert len(streamed) == 5 and streamed[-1].eof


def test_each_job_gets_its_own_environment(r) -> None:
    """The spawn reuses the encoded environment of the job before only when it is equal:
    alternating environments each reach their own job."""
    for value in ("1", None, "2", "2", None, "1"):
        args: dict = {"name": "sh", "args": ["-c", 'echo "A=${A-unset}"']}
        if value is not None:
            args["env"] = {"A": value}
        res = run(r, "core.system", args)
        assert res["streams"][0] == f"A={value or 'unset'}\n"
