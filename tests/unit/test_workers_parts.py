"""The parts of ``aib serve --workers N``, each on its own, in this process.

Shared metrics (``merge_counters``, ``MetricsObserver.view``, ``WorkerMetrics``), the published
configuration (``Cluster``, ``forward_to_leader``), the worker spec, the listening socket and the
supervisor itself, run here with a fake worker executable (``workers_support.fake_worker_script``)
instead of real gateways. The real process tree is tested in tests/integration/test_workers.py.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import marshal
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest

from aib.gateway import workers as workers_mod
from aib.gateway.workers import SPEC_ENV, Supervisor, WorkerSpec, bind, main, supervisor_argv
from aib.observe.metrics import (
    DURATION_BUCKETS,
    OVERHEAD_BUCKETS,
    TTFT_BUCKETS,
    MetricsObserver,
    merge_counters,
)
from aib.observe.shared import SUFFIX, WorkerMetrics
from aib.reload.cluster import CLIENT_HEADER, LEADER_SOCKET, PUBLISHED, Cluster, forward_to_leader
from aib.reload.sources import from_bytes
from gateway_harness import HOST, wait_until
from observe_support import FakeGateway, make_record, small_plan
from workers_support import (
    FAKE_DIR_ENV,
    FAKE_MODE_ENV,
    all_ready,
    fake_notes,
    fake_worker_script,
    run_supervisor,
)

pytestmark = pytest.mark.unit


def dead_pid() -> int:
    """A PID no process can have (pid_max itself is never handed out)."""
    return int(Path("/proc/sys/kernel/pid_max").read_text())


def counters(requests: int = 0, inflight: int = 0, **extra: Any) -> dict[str, Any]:
    """A snapshot shaped like ``MetricsObserver.counters()``."""
    buckets = [0] * (len(DURATION_BUCKETS) + 1)
    buckets[3] = requests
    base: dict[str, Any] = {
        "requests": {("r", "p", "chat/completions", 200): [requests, 0.5 * requests, *buckets]},
        "ttft": {},
        "overhead": [0.1, 1, 0, 2] + [0] * (len(OVERHEAD_BUCKETS) - 2),
        "tokens": {("r", "p"): [3, 4]},
        "attempts": {("p", "ok"): requests},
        "fallbacks": {},
        "reloads": {"success": 1, "failure": 0},
        "inflight": inflight,
    }
    base.update(extra)
    return base


# --------------------------------------------------------------------------- merge_counters


def test_merge_sums_numbers_bucket_lists_and_label_dicts() -> None:
    a = counters(requests=2, inflight=1)
    b = counters(requests=3, inflight=4)
    m = merge_counters([a, b])
    row = m["requests"][("r", "p", "chat/completions", 200)]
    assert row[0] == 5 and row[1] == pytest.approx(2.5) and row[2 + 3] == 5 and sum(row[2:]) == 5
    assert m["overhead"] == [pytest.approx(0.2), 2, 0, 4] + [0] * (len(OVERHEAD_BUCKETS) - 2)
    assert m["tokens"] == {("r", "p"): [6, 8]}
    assert m["attempts"] == {("p", "ok"): 5}
    assert m["reloads"] == {"success": 2, "failure": 0}
    assert m["inflight"] == 5


def test_merge_keeps_keys_present_in_one_part_only() -> None:
    a = counters(requests=1, fallbacks={"r": 2})
    ttft = [0.2, 1] + [0] * len(TTFT_BUCKETS)
    b = counters(requests=1, ttft={("r", "p"): ttft})
    b["requests"][("other", "p", "embeddings", 500)] = [7, 1.0, *([0] * (len(DURATION_BUCKETS) + 1))]
    b["attempts"][("p", "timeout")] = 3
    del b["fallbacks"]
    c = {"extra": 9}  # a name only one worker has (an older or newer snapshot shape)
    m = merge_counters([a, b, c])
    assert m["fallbacks"] == {"r": 2}
    assert m["ttft"] == {("r", "p"): ttft}
    assert m["requests"][("other", "p", "embeddings", 500)][0] == 7
    assert m["requests"][("r", "p", "chat/completions", 200)][0] == 2
    assert m["attempts"] == {("p", "ok"): 2, ("p", "timeout"): 3}
    assert m["extra"] == 9
    assert merge_counters([]) == {}
    assert merge_counters([a]) == a


def test_merge_does_not_change_its_inputs() -> None:
    a = counters(requests=2, inflight=1, fallbacks={"r": 1})
    b = counters(requests=3, inflight=2, fallbacks={"r": 5, "s": 1})
    before = copy.deepcopy([a, b])
    m = merge_counters([a, b])
    assert [a, b] == before
    # the merged result is no view of the first part: changing it leaves the part alone
    m["requests"][("r", "p", "chat/completions", 200)][0] += 100
    m["fallbacks"]["new"] = 1
    m["overhead"][1] += 100
    assert [a, b] == before


# --------------------------------------------------------------------------- MetricsObserver.view


@pytest.fixture
def obs(tmp_path: Path) -> MetricsObserver:
    return MetricsObserver(FakeGateway(small_plan(tmp_path)), process_metrics=False)


def test_view_is_own_counters_without_siblings(obs: MetricsObserver) -> None:
    obs.request_done(make_record())
    assert obs.siblings is None
    assert obs.view() == obs.counters()


def test_view_and_scrape_add_the_siblings(obs: MetricsObserver) -> None:
    obs.request_done(make_record())
    obs.request_done(make_record(status=502))
    other = marshal.loads(marshal.dumps(obs.counters()))  # a sibling that saw the same two requests
    other["inflight"] = 3
    calls: list[int] = []

    def siblings() -> list[dict[str, Any]]:
        calls.append(1)
        return [other, other]

    obs.siblings = siblings
    v = obs.view()
    assert v["requests"][("llama3", "ollama", "chat/completions", 200)][0] == 3
    assert v["requests"][("llama3", "ollama", "chat/completions", 502)][0] == 3
    assert v["inflight"] == 6
    own = obs.counters()["requests"][("llama3", "ollama", "chat/completions", 200)]
    assert own[0] == 1, "the live counters are not changed by a merge"

    def sample(name: str, **labels: str) -> float | None:
        return obs.registry.get_sample_value(name, labels)

    labels = {"route": "llama3", "provider": "ollama", "endpoint": "chat/completions"}
    assert sample("aib_requests_total", status="200", **labels) == 3
    assert sample("aib_requests_total", status="502", **labels) == 3
    assert sample("aib_upstream_attempts_total", provider="ollama", outcome="ok") == 3
    assert sample("aib_request_duration_seconds_count", route="llama3", provider="ollama") == 6
    assert sample("aib_inflight_requests") == 6  # own 0 + the siblings' 3 + 3
    assert calls, "a scrape asks for the siblings"


# --------------------------------------------------------------------------- WorkerMetrics


def test_worker_metrics_share_counters_through_the_folder(obs: MetricsObserver, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    shared = WorkerMetrics(obs, folder)
    assert obs.siblings == shared.siblings
    obs.request_done(make_record())
    shared.write()
    own = folder / f"{os.getpid()}{SUFFIX}"
    assert marshal.loads(own.read_bytes()) == obs.counters()
    assert shared.siblings() == [], "its own file is not a sibling"

    alive, dead = os.getppid(), dead_pid()
    (folder / f"{alive}{SUFFIX}").write_bytes(marshal.dumps(counters(requests=2, inflight=5)))
    (folder / f"{dead}{SUFFIX}").write_bytes(marshal.dumps(counters(requests=7, inflight=9)))
    # what a reader must skip: garbage, a temporary file, a name that is no PID, a folder, other files
    (folder / f"123{SUFFIX}").write_bytes(b"\x00not marshal")
    (folder / f".{alive}{SUFFIX}.tmp").write_bytes(marshal.dumps(counters(requests=1000)))
    (folder / f"worker{SUFFIX}").write_bytes(marshal.dumps(counters(requests=1000)))
    (folder / f"456{SUFFIX}").mkdir()
    (folder / "notes.txt").write_text("hello")
    by_requests = {s["requests"][("r", "p", "chat/completions", 200)][0]: s for s in shared.siblings()}
    assert set(by_requests) == {2, 7}
    assert by_requests[2]["inflight"] == 5, "a live sibling's requests in flight count"
    assert by_requests[7]["inflight"] == 0, "a dead one has none in flight"
    assert by_requests[7]["attempts"] == {("p", "ok"): 7}, "but its counters stay"
    v = obs.view()
    assert v["requests"][("r", "p", "chat/completions", 200)][0] == 9
    assert v["requests"][("llama3", "ollama", "chat/completions", 200)][0] == 1
    assert v["inflight"] == 5


def test_worker_metrics_read_a_changed_snapshot_again(obs: MetricsObserver, tmp_path: Path) -> None:
    shared = WorkerMetrics(obs, tmp_path)
    other = tmp_path / f"{os.getppid()}{SUFFIX}"
    other.write_bytes(marshal.dumps(counters(requests=1)))
    os.utime(other, ns=(1_000_000_000, 1_000_000_000))
    assert shared.siblings()[0]["attempts"] == {("p", "ok"): 1}
    assert shared.siblings()[0]["attempts"] == {("p", "ok"): 1}  # from the cache
    other.write_bytes(marshal.dumps(counters(requests=4)))
    os.utime(other, ns=(2_000_000_000, 2_000_000_000))
    assert shared.siblings()[0]["attempts"] == {("p", "ok"): 4}


def test_worker_metrics_without_a_folder(obs: MetricsObserver, tmp_path: Path) -> None:
    shared = WorkerMetrics(obs, tmp_path / "gone")
    assert shared.siblings() == []
    shared.write()  # the run folder was removed (the supervisor stopping): nothing to do, no error
    assert not (tmp_path / "gone").exists()


async def test_worker_metrics_write_on_a_timer_and_at_stop(obs: MetricsObserver, tmp_path: Path) -> None:
    folder = tmp_path / "run" / "metrics"
    shared = WorkerMetrics(obs, folder, every_s=0.02)
    folded: list[int] = []
    obs.before_collect.append(lambda: folded.append(1))
    shared.start()
    assert shared.path.exists(), "written at once"
    obs.request_done(make_record())

    def requests_in_file() -> int:
        rows = marshal.loads(shared.path.read_bytes())["requests"]
        return sum(int(c[0]) for c in rows.values())

    deadline = time.monotonic() + 5
    while requests_in_file() != 1:
        assert time.monotonic() < deadline, "the snapshot was not rewritten"
        await asyncio.sleep(0.01)
    assert folded, "what is batched is folded before each write"
    obs.request_done(make_record())
    shared.stop()
    assert shared._timer is None
    assert requests_in_file() == 2, "the last counts are written at stop"
    assert [p.name for p in folder.iterdir()] == [shared.path.name], "no temporary file is left"


# --------------------------------------------------------------------------- Cluster


PROVIDERS = b"providers:\n  fake: {type: openai_compatible, base_url: 'http://127.0.0.1:9', models: [m1]}\n"
MAPPINGS = b"models:\n  m1: {provider: fake}\n"
NAMES = ("cfg/providers.yaml", "cfg/model-mappings.yaml")


@pytest.fixture
def usr1() -> Any:
    """SIGUSR1 to this process is recorded (the handler before it is restored after)."""
    got: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_publish_then_read_published(tmp_path: Path, usr1: list[int]) -> None:
    leader = Cluster(tmp_path, True, os.getpid())
    follower = Cluster(tmp_path, False, os.getpid())
    assert follower.read_published() is None, "nothing published yet"
    src = from_bytes(PROVIDERS, MAPPINGS, NAMES)
    leader.publish(src)
    wait_until(lambda: usr1 == [signal.SIGUSR1], 5.0, what="SIGUSR1 to the supervisor")
    got = follower.read_published()
    assert got is not None
    assert (got.providers, got.mappings, got.names) == (PROVIDERS, MAPPINGS, NAMES)
    assert got.version == src.version and got.issues == ()
    assert [p.name for p in tmp_path.iterdir()] == [PUBLISHED], "replaced atomically, no temp file left"
    assert leader.published == tmp_path / PUBLISHED and leader.leader_socket == tmp_path / LEADER_SOCKET

    newer = from_bytes(PROVIDERS, MAPPINGS + b"  m2: {provider: fake, upstream: m1}\n", NAMES)
    leader.publish(newer)
    wait_until(lambda: len(usr1) == 2, 5.0, what="the second SIGUSR1")
    again = follower.read_published()
    assert again is not None and again.version == newer.version != src.version


def test_read_published_garbage_is_none(tmp_path: Path) -> None:
    c = Cluster(tmp_path, False, os.getpid())
    for raw in (b"", b"\x00garbage", marshal.dumps(("only two", b"x")), marshal.dumps(42)):
        (tmp_path / PUBLISHED).write_bytes(raw)
        assert c.read_published() is None, raw


def test_publish_with_the_supervisor_gone(tmp_path: Path) -> None:
    leader = Cluster(tmp_path, True, dead_pid())
    leader.publish(from_bytes(PROVIDERS, MAPPINGS, NAMES))  # no supervisor to tell: no error
    assert Cluster(tmp_path, False, 0).read_published() is not None


async def test_forward_to_leader_passes_the_request_and_the_answer(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, False, os.getpid())
    seen: list[bytes] = []

    async def leader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(ln for ln in head.split(b"\r\n") if ln.startswith(b"content-length:")).split()[1])
        seen.append(head + await reader.readexactly(length))
        body = b'{"id": 7}'
        writer.write(
            b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(leader, path=str(cluster.leader_socket))
    try:
        headers = [
            (b"authorization", b"Bearer k"),
            (b"x-admin-key", b"a"),
            (b"content-type", b"application/json"),
            (b"cookie", b"secret=1"),
            (b"host", b"example"),
        ]
        status, ctype, body = await forward_to_leader(
            cluster, "POST", b"/admin/reload?x=1", headers, b'{"by": "me"}', "10.0.0.5", 5.0
        )
    finally:
        server.close()
        await server.wait_closed()
    assert (status, ctype, body) == (422, b"application/json; charset=utf-8", b'{"id": 7}')
    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"POST /admin/reload?x=1 HTTP/1.1"
    assert b"authorization: Bearer k" in lines and b"x-admin-key: a" in lines
    assert b"content-type: application/json" in lines
    assert CLIENT_HEADER + b": 10.0.0.5" in lines
    assert not [ln for ln in lines if ln.startswith((b"cookie", b"host: example"))], lines
    assert seen[0].endswith(b'\r\n\r\n{"by": "me"}')


async def test_forward_to_leader_failures(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, False, os.getpid())
    with pytest.raises(OSError):  # no leader socket (the leader is restarting)
        await forward_to_leader(cluster, "GET", b"/admin/reloads", [], b"", "?", 2.0)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")  # no end of the head
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(hang_up, path=str(cluster.leader_socket))
    try:
        with pytest.raises(OSError, match="without a complete answer"):
            await forward_to_leader(cluster, "GET", b"/admin/reloads", [], b"", "?", 2.0)
    finally:
        server.close()
        await server.wait_closed()

    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the caller gives up and closes
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_unix_server(silent, path=str(cluster.leader_socket))
    try:
        with pytest.raises(TimeoutError):
            await forward_to_leader(cluster, "GET", b"/admin/reloads", [], b"", "?", 0.2)
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- WorkerSpec, bind, main


def spec(**kw: Any) -> WorkerSpec:
    values: dict[str, Any] = {
        "index": 1, "count": 3, "listen_fd": 5, "ready_fd": 7, "run_dir": "/tmp/aib-serve-x",
        "supervisor_pid": 42, "host": "127.0.0.1", "port": 4000, "config_dir": "/etc/aib",
        "health_checks": False, "log_level": "debug",
    }  # fmt: skip
    values.update(kw)
    return WorkerSpec(**values)


def test_worker_spec_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SPEC_ENV, raising=False)
    assert WorkerSpec.from_env() is None
    for s in (spec(), spec(index=0, config_dir=None, health_checks=True)):
        monkeypatch.setenv(SPEC_ENV, s.to_env())
        assert WorkerSpec.from_env() == s
    assert spec(index=0).leader and not spec(index=1).leader
    monkeypatch.setenv(SPEC_ENV, "")
    assert WorkerSpec.from_env() is None


def test_bind_listens_inheritably_and_refuses_a_taken_port() -> None:
    sock = bind(HOST, 0)
    try:
        assert sock.get_inheritable()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        port = sock.getsockname()[1]
        with pytest.raises(OSError) as info:
            bind(HOST, port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        sock.close()
    with pytest.raises(OSError):  # not an address of this machine
        bind("192.0.2.1", 0)


def test_bind_ipv6_loopback() -> None:
    try:
        sock = bind("::1", 0)
    except OSError as exc:  # pragma: no cover - a machine without IPv6
        pytest.skip(f"no IPv6 loopback: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6


def test_supervisor_argv_runs_the_module_with_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/bin/aib", "serve", "--workers", "3", "--port", "4100"])
    argv = supervisor_argv(3, "127.0.0.1", 4100, tmp_path, False, "debug", 5.0)
    assert argv[:4] == [sys.executable, "-m", "aib.gateway.workers", "--supervise"]
    assert orjson.loads(argv[4]) == {
        "count": 3, "host": "127.0.0.1", "port": 4100, "config_dir": str(tmp_path),
        "health_checks": False, "log_level": "debug", "drain_s": 5.0, "insecure_open": False,
    }  # fmt: skip
    assert argv[5:] == ["--", "aib", "serve", "--workers", "3", "--port", "4100"]  # shown by `ps`
    other = supervisor_argv(2, "127.0.0.1", 4100, None, True, "info", 30.0)
    assert orjson.loads(other[4])["config_dir"] is None


def test_main_without_a_spec_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(SPEC_ENV, raising=False)
    assert main([]) == 2
    assert main(["--supervise"]) == 2
    assert main(["--", "aib", "serve", "--workers", "2"]) == 2  # what follows -- is only shown
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all("runs `aib serve" in ln and "start that instead" in ln for ln in lines)


def test_the_module_without_a_spec_exits_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != SPEC_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "aib.gateway.workers"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stdout == ""
    # (it names itself "__main__" here, not aib.gateway.workers: see the report)
    assert "runs `aib serve" in done.stderr and "start that instead" in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_supervisor_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Supervisor(0, HOST, 0, None)


# --------------------------------------------------------------------------- Supervisor, fake workers


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Workers are the fake worker script; returns the folder where they note what they see."""
    notes = tmp_path / "notes"
    notes.mkdir()
    script = fake_worker_script(tmp_path)
    monkeypatch.setattr(workers_mod, "sys", types.SimpleNamespace(executable=str(script)))
    monkeypatch.setenv(FAKE_DIR_ENV, str(notes))
    monkeypatch.delenv(FAKE_MODE_ENV, raising=False)
    return notes


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("quick", [True, False], ids=["quick-exit", "after-a-while"])
def test_supervisor_starts_signals_restarts_and_stops(
    fake: Path, quick: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not quick:  # any exit counts as "after a while": restarted at once
        monkeypatch.setattr(workers_mod, "QUICK_EXIT_S", 0.0)
    caplog.set_level("INFO", logger="aib.gateway")
    sup = Supervisor(2, HOST, 0, Path("/nowhere"), health_checks=False, log_level="debug", drain_s=5.0)
    seen: dict[str, Any] = {}

    def notes(i: int) -> list[str]:
        return [n for _, n in fake_notes(fake, i)]

    def driver(s: Supervisor) -> None:
        wait_until(lambda: all_ready(s, 2), 20, what="two ready workers")
        assert s.run_dir is not None and s.sock is not None
        seen["run_dir"], seen["port"] = s.run_dir, s.sock.getsockname()[1]
        seen["first"] = {i: w.proc.pid for i, w in s.workers.items()}
        os.kill(os.getpid(), signal.SIGHUP)  # `kill -HUP supervisor`: the leader reloads
        wait_until(lambda: "HUP" in notes(0), 5, what="SIGHUP passed to the leader")
        os.kill(os.getpid(), signal.SIGUSR1)  # the leader published: the followers load it
        wait_until(lambda: "HUP" in notes(1), 5, what="SIGHUP passed to the follower")
        assert notes(0).count("HUP") == 1 and notes(1).count("HUP") == 1
        os.kill(seen["first"][1], signal.SIGKILL)
        wait_until(
            lambda: 1 in s.workers and s.workers[1].proc.pid != seen["first"][1] and s.workers[1].ready,
            10,
            what="worker 1 restarted",
        )
        seen["second"] = {i: w.proc.pid for i, w in s.workers.items()}
        os.kill(os.getpid(), signal.SIGTERM)

    t0 = time.monotonic()
    assert run_supervisor(sup, driver) == 0
    assert time.monotonic() - t0 < 20
    first, second = seen["first"], seen["second"]
    assert second[0] == first[0] and second[1] != first[1]
    if not quick:  # (a restart after a pause is not counted: see the report on Supervisor.restarts)
        assert sup.restarts == 1
    for pid in {*first.values(), *second.values()}:
        assert gone(pid), pid
    assert not seen["run_dir"].exists(), "the run folder is removed"
    assert sup.sock is not None and sup.sock.fileno() == -1, "the listening socket is closed"
    ready = [n for n in notes(0) if n.startswith("ready")]
    assert ready == [f"ready listening=1 port={seen['port']} count=2 sup={os.getpid()} run_dir=True"]
    assert notes(0)[-2:] == ["TERM", "stop"] and notes(1)[-2:] == ["TERM", "stop"]
    messages = [r.getMessage() for r in caplog.records if r.name == "aib.gateway"]
    pids = f"{first[0]}, {first[1]}"
    assert f"gateway listening on http://{HOST}:{seen['port']} (2 workers: {pids})" in messages
    pause = " in 1s" if quick else ""
    assert f"worker 1 (pid {first[1]}) exited with code -9; restarting it{pause}" in messages
    assert "stopping 2 workers (drain up to 5s)" in messages


def test_supervisor_stops_with_the_leaders_bad_config_code(
    fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(FAKE_MODE_ENV, "bad-config")  # every worker reads the same bad files
    caplog.set_level("INFO", logger="aib.gateway")
    sup = Supervisor(3, HOST, 0, None, drain_s=5.0)
    t0 = time.monotonic()
    assert run_supervisor(sup, lambda s: None, timeout=20) == 2
    assert time.monotonic() - t0 < 15
    messages = [r.getMessage() for r in caplog.records if r.name == "aib.gateway"]
    assert "the leader worker could not start (exit code 2)" in messages
    # the followers failing on the same files are not reported once more
    assert not [m for m in messages if "exited with code" in m], messages
    assert all(w.proc.poll() is not None for w in sup.workers.values())
    assert sup.run_dir is not None and not sup.run_dir.exists()


def test_supervisor_stopped_while_starting(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_MODE_ENV, "slow-ready")
    sup = Supervisor(2, HOST, 0, None, drain_s=5.0)

    def driver(s: Supervisor) -> None:
        # a worker's own SIGTERM handler is set (a real worker sets it later, when it serves)
        wait_until(lambda: all(fake_notes(fake, i) for i in (0, 1)), 10, what="two workers started")
        assert not any(w.ready for w in s.workers.values())
        os.kill(os.getpid(), signal.SIGTERM)

    assert run_supervisor(sup, driver) == 0
    for i in (0, 1):
        notes = [n for _, n in fake_notes(fake, i)]
        assert notes[:2] == ["start", "TERM"] and notes[2].startswith("ready") and notes[3:] == ["stop"]
    assert all(w.proc.poll() is not None for w in sup.workers.values())


def test_workers_that_never_get_ready_are_killed(
    fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(FAKE_MODE_ENV, "never-ready")  # hung at startup, deaf to SIGTERM
    monkeypatch.setattr(workers_mod, "READY_TIMEOUT_S", 1.0)
    caplog.set_level("INFO", logger="aib.gateway")
    sup = Supervisor(2, HOST, 0, None, drain_s=5.0)
    t0 = time.monotonic()
    assert run_supervisor(sup, lambda s: None, timeout=20) == 1
    assert time.monotonic() - t0 < 10
    assert "the workers did not get ready within 1s" in caplog.messages
    assert sup.workers and all(w.proc.returncode == -signal.SIGKILL for w in sup.workers.values())
    assert sup.run_dir is not None and not sup.run_dir.exists()


def test_a_second_sigterm_stops_the_workers_at_once(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAKE_MODE_ENV, "stubborn")  # a worker draining slowly: only a second TERM stops it
    sup = Supervisor(2, HOST, 0, None, drain_s=30.0)

    def driver(s: Supervisor) -> None:
        wait_until(lambda: all_ready(s, 2), 20, what="two ready workers")
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: all("TERM" in [n for _, n in fake_notes(fake, i)] for i in (0, 1)), 10)
        os.kill(os.getpid(), signal.SIGTERM)

    t0 = time.monotonic()
    assert run_supervisor(sup, driver) == 0
    assert time.monotonic() - t0 < 15, "did not wait for the 30 s drain"
    for i in (0, 1):
        assert [n for _, n in fake_notes(fake, i)][-3:] == ["TERM", "TERM", "stop"]


def test_supervisor_on_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="aib.gateway")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        sup = Supervisor(2, HOST, port, None)
        assert sup.run() == 1
    assert sup.run_dir is None and sup.workers == {}
    assert f"cannot listen on {HOST}:{port}: Address already in use" in caplog.messages


def test_supervisor_when_workers_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers_mod, "sys", types.SimpleNamespace(executable=str(tmp_path / "missing")))
    monkeypatch.setattr(workers_mod, "READY_TIMEOUT_S", 0.3)
    caplog.set_level("INFO", logger="aib.gateway")
    sup = Supervisor(2, HOST, 0, None)
    code = run_supervisor(sup, lambda s: None, timeout=3)  # SIGTERM after 3 s if still running
    missing = tmp_path / "missing"
    assert [m for m in caplog.messages if m.startswith("cannot start worker")] == [
        f"cannot start worker {i}: [Errno 2] No such file or directory: '{missing}'" for i in (0, 1)
    ]
    if code != 1 or [m for m in caplog.messages if m.startswith("gateway listening")]:
        pytest.fail(f"exit code {code}: {caplog.messages}")
    assert "the workers did not get ready within 0s" in caplog.messages
    assert sup.run_dir is not None and not sup.run_dir.exists()


def test_a_reload_asked_for_while_starting_waits_for_the_leader(
    fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP (``systemctl reload``) before the leader is ready is not sent to a worker that cannot take
    it yet: it goes to the leader once every worker is ready, once."""
    monkeypatch.setenv(FAKE_MODE_ENV, "slow-ready")
    sup = Supervisor(2, HOST, 0, None, drain_s=5.0)

    def driver(s: Supervisor) -> None:
        wait_until(lambda: all(fake_notes(fake, i) for i in (0, 1)), 10, what="two workers started")
        assert not any(w.ready for w in s.workers.values())
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: s.started, 10, what="every worker ready")
        wait_until(lambda: "HUP" in [n for _, n in fake_notes(fake, 0)], 5, what="the leader's SIGHUP")
        os.kill(os.getpid(), signal.SIGTERM)

    assert run_supervisor(sup, driver) == 0
    leader = [n for _, n in fake_notes(fake, 0)]
    assert leader.index("HUP") > next(i for i, n in enumerate(leader) if n.startswith("ready"))
    assert leader.count("HUP") == 1
    assert "HUP" not in [n for _, n in fake_notes(fake, 1)]  # a follower hears of applied configs only


def test_run_dirs_of_killed_supervisors_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aib.gateway.workers import RUN_DIR_PREFIX, _remove_stale_run_dirs

    monkeypatch.setattr(workers_mod.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{RUN_DIR_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{RUN_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{RUN_DIR_PREFIX}notapid-x"
    for d in (stale, live, other):
        (d / "metrics").mkdir(parents=True)
    _remove_stale_run_dirs()
    assert not stale.exists() and live.exists() and other.exists()
