"""``aib serve --workers 2`` as a user runs it: real processes, real HTTP, the fake upstream.

One supervisor with two workers (``served``, module scope) answers the traffic, metrics, reload and
restart tests; the tests that stop or break an instance start their own. Requests go on a fresh
connection each, so the kernel hands them to whichever worker accepts first; the worker that answered
is told by the request id it made (a random prefix per process). Every process started here is
stopped here, by PID (the supervisor's tree too, should it leave anything behind).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from aib.config.load import MAPPINGS_FILE
from aib.gateway.workers import SPEC_ENV
from aib.ops.procs import aib_command
from gateway_harness import FakeOpenAIProcess, fake_openai_process, wait_until
from reload_support import mappings_yaml, provider_yaml, version_of
from workers_support import (
    ServedGateway,
    chat,
    chats_on_both,
    fan_out,
    listening_socket,
    metric_total,
    request,
    serve_env,
    worker_of,
)

pytestmark = pytest.mark.integration


UPSTREAM_MODELS = ("m1", "m2", "mx", "mk0", "mk1")
MODELS = ("m1", "mx", "mk0", "mk1")  # mx: the metrics test's own route; mk0/mk1: the restart tests'
STREAM_CHUNKS = 10  # the fake streams 10 chunks 100 ms apart: a stream is in flight for about 1 s
WORKER_CMD = ["-m", "aib.gateway.workers"]


def write_config(cdir: Path, fake: FakeOpenAIProcess, models: tuple[str, ...] = MODELS) -> Path:
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "providers.yaml").write_text(provider_yaml({"fake": fake.base_url}, models=UPSTREAM_MODELS))
    (cdir / MAPPINGS_FILE).write_text(mappings_yaml(dict.fromkeys(models, "fake")))
    return cdir


def processes_of(supervisor_pid: int) -> list[psutil.Process]:
    """Every live process started for that supervisor (workers and their writers carry its spec)."""
    out = []
    for p in psutil.process_iter():
        try:
            raw = p.environ().get(SPEC_ENV)
            if raw and json.loads(raw)["supervisor_pid"] == supervisor_pid and p.status() != "zombie":
                out.append(p)
        except (psutil.Error, ValueError, KeyError):
            continue
    return out


def scrape(port: int) -> str:
    reply = request(port, "GET", "/metrics")
    assert reply.status == 200, reply
    return reply.body.decode()


def wait_requests_total(port: int, route: str, want: int, timeout: float = 15.0) -> None:
    """Until a scrape counts ``want`` requests for ``route`` (snapshots are written every second);
    never more than that on the way."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != want:
        assert time.monotonic() < deadline, (
            f"aib_requests_total{{route={route!r}}}: want {want}, saw {seen[-5:]}"
        )
        if seen:
            time.sleep(0.1)
        seen.append(metric_total(scrape(port), "aib_requests_total", route=route))
        assert seen[-1] <= want, seen


def wait_snapshots(served: ServedGateway, pids: list[int], since: float) -> None:
    """Until each of these workers wrote its metrics snapshot after ``since`` (wall clock): a scrape
    on any worker then counts everything that happened before."""
    folder = served.run_dir() / "metrics"

    def written() -> bool:
        try:
            return all((folder / f"{pid}.marshal").stat().st_mtime > since for pid in pids)
        except FileNotFoundError:
            return False

    wait_until(written, 5, 0.05, f"metrics snapshots of {pids} newer than the traffic")


def all_ok(replies: list[Any]) -> None:
    bad = [r for r in replies if r.status != 200]
    assert not bad, bad[:3]


def writers_of(pid: int) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children() if "aib.observe.writer" in c.cmdline()]


def openai_client(port: int) -> openai.OpenAI:
    """The official client, a new connection per request (no keep-alive: any worker may answer)."""
    http_client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), timeout=20)
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, http_client=http_client
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIProcess]:
    with fake_openai_process("--chunks", str(STREAM_CHUNKS), "--chunk-delay-ms", "100") as f:
        yield f


@pytest.fixture(scope="module")
def served(fake: FakeOpenAIProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGateway]:
    root = tmp_path_factory.mktemp("workers")
    cdir = write_config(root / "config", fake)
    with ServedGateway(cdir, root / "serve.log") as sg:
        yield sg
    assert sg.wait_exit(0) == 0, sg.log()[-3000:]
    assert "Traceback" not in sg.log(), sg.log()[-3000:]


# --------------------------------------------------------------------------- one instance, many tests


def test_two_workers_serve_one_port(served: ServedGateway) -> None:
    pids = served.wait_stable()
    sup = served.supervisor()
    assert sup.cmdline()[1:4] == [*WORKER_CMD, "--supervise"], sup.cmdline()
    kids = served.workers()
    assert sorted(k.pid for k in kids) == sorted(pids.values()) and len(set(pids.values())) == 2
    for k in kids:
        assert k.cmdline()[1:] == WORKER_CMD
        assert len(writers_of(k.pid)) == 1, "each worker has its observe writer"
    # the supervisor is lean: no gateway libraries, a fraction of a worker's memory
    assert sup.memory_info().rss < 0.6 * min(k.memory_info().rss for k in kids)
    assert not [m.path for m in sup.memory_maps() if "uvloop" in m.path or "httptools" in m.path]

    replies = fan_out(lambda _: chat(served.port, "m1"), 200)
    replies += chats_on_both(served.port, "m1")
    all_ok(replies)
    assert all(r.json()["choices"][0]["message"]["content"] for r in replies)
    assert len({worker_of(r) for r in replies}) == 2, "both workers answered"

    client = openai_client(served.port)
    try:
        assert "m1" in {m.id for m in client.models.list()}
        for _ in range(10):
            out = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
            assert out.choices[0].message.content
    finally:
        client.close()


def test_metrics_on_any_worker_count_every_worker(served: ServedGateway) -> None:
    replies = chats_on_both(served.port, "mx")
    sent = time.time() + 0.05
    all_ok(replies)
    assert len({worker_of(r) for r in replies}) == 2
    wait_requests_total(served.port, "mx", len(replies))
    # a worker adds the others' snapshots, up to a second old: once both are newer than the traffic,
    # every scrape tells the same total (and never less than one before it)
    wait_snapshots(served, list(served.wait_stable().values()), sent)
    totals = set()
    for _ in range(12):  # fresh connections: both workers answer some of these scrapes
        text = scrape(served.port)
        totals.add(metric_total(text, "aib_requests_total", route="mx", status="200"))
        assert metric_total(text, "aib_inflight_requests") == 0
    assert totals == {len(replies)}


def test_reload_reaches_every_worker(served: ServedGateway) -> None:
    port, cdir = served.port, served.config_dir
    before = chats_on_both(port, "m2", batch=20)
    assert {r.status for r in before} == {404}, "m2 is not configured yet"
    offset = len(served.log())
    (cdir / MAPPINGS_FILE).write_text(mappings_yaml(dict.fromkeys((*MODELS, "m2"), "fake")))
    version = version_of(cdir)
    served.wait_log(
        rf"aib\.reload\[w0\]: reload #\d+ \(watcher: [^)]*\): applied: applied {version}", after=offset
    )
    served.wait_log(rf"aib\.reload\[w1\]: following the leader: now serving {version}", after=offset)
    # converged: no worker answers 404 any more
    replies = chats_on_both(port, "m2")
    all_ok(replies)
    assert len({worker_of(r) for r in replies}) == 2
    assert all(r.json()["model"] == "m2" for r in replies)


def test_admin_reloads_are_run_by_the_leader(served: ServedGateway) -> None:
    port = served.port
    answers = [request(port, "POST", "/admin/reload", {"by": f"t{i}"}) for i in range(12)]
    assert {a.status for a in answers} == {200}, answers[:2]
    bodies = [a.json() for a in answers]
    ids = [b["id"] for b in bodies]
    assert ids == list(range(ids[0], ids[0] + 12)), ids  # one controller numbers them all: the leader's
    assert {b["result"] for b in bodies} == {"unchanged"}
    assert [b["by"] for b in bodies] == [f"t{i} from 127.0.0.1" for i in range(12)]
    log = served.log()
    for i, rid in enumerate(ids):
        assert re.search(rf"aib\.reload\[w0\]: reload #{rid} \(api: t{i} from 127\.0\.0\.1\)", log), rid
    assert "aib.reload[w1]: reload #" not in log, "a follower never runs a reload itself"

    histories = [request(port, "GET", "/admin/reloads?limit=100") for _ in range(8)]
    assert {h.status for h in histories} == {200}
    listed = [[r["id"] for r in h.json()["reloads"]] for h in histories]
    assert all(ls == listed[0] for ls in listed), "every worker shows the leader's history"
    assert set(ids) <= set(listed[0]) and listed[0][0] == ids[-1]
    assert {h.json()["config_dir"] for h in histories} == {str(served.config_dir.resolve())}


def test_a_bad_edit_is_rejected_and_every_worker_keeps_serving(served: ServedGateway) -> None:
    port, cdir = served.port, served.config_dir
    good = (cdir / MAPPINGS_FILE).read_bytes()
    in_force = [m for m in ("m1", "m2") if f"  {m}:".encode() in good]  # (mx, mk*: other tests count them)
    offset = len(served.log())
    try:
        (cdir / MAPPINGS_FILE).write_text("models: [m1\n")
        served.wait_log(r"aib\.reload\[w0\]: reload #\d+ \(watcher: [^)]*\): rejected", after=offset)
        answer = request(port, "POST", "/admin/reload", {"by": "bad-edit"})
        assert answer.status == 422, answer
        body = answer.json()
        assert body["result"] == "rejected" and len(body["errors"]) == 1
        assert f"{MAPPINGS_FILE}:1: YAML syntax error" in body["errors"][0]
        for model in in_force:
            replies = chats_on_both(port, model, batch=30)
            all_ok(replies)
            assert len({worker_of(r) for r in replies}) == 2
        after = served.log()[offset:]
        assert "following the leader" not in after and "exited with code" not in after
    finally:
        (cdir / MAPPINGS_FILE).write_bytes(good)


@pytest.mark.parametrize("index", [0, 1], ids=["leader", "follower"])
def test_a_killed_worker_is_restarted(served: ServedGateway, index: int) -> None:
    port, model = served.port, f"mk{index}"
    pids = served.wait_stable()
    victim = pids[index]
    writers = writers_of(victim)
    first = chats_on_both(port, model)
    all_ok(first)
    wait_requests_total(port, model, len(first))
    # a SIGKILL loses what the victim counted since its last snapshot (written every second): wait for
    # one written after the traffic
    wait_snapshots(served, [victim], time.time() + 0.05)
    offset = len(served.log())
    os.kill(victim, signal.SIGKILL)
    served.wait_log(rf"worker {index} \(pid {victim}\) exited with code -9; restarting it", after=offset)
    now = served.wait_stable()
    assert now[index] != victim and now[1 - index] == pids[1 - index]
    _, alive = psutil.wait_procs(writers, timeout=10)
    assert not alive, "the killed worker's writer stopped too"
    # no retries: every request sent after the restart succeeds, on both workers
    second = chats_on_both(port, model)
    all_ok(second)
    assert len({worker_of(r) for r in second}) == 2
    # the killed worker's counts stay in the totals
    wait_requests_total(port, model, len(first) + len(second))
    if index == 0:  # the new leader runs the reloads the followers forward
        answers = [request(port, "POST", "/admin/reload", {"by": "after"}) for _ in range(6)]
        assert {a.status for a in answers} == {200}, answers[:2]
        ids = [a.json()["id"] for a in answers]
        assert ids == list(range(ids[0], ids[0] + 6))


# --------------------------------------------------------------------------- instances of their own


def test_sigterm_drains_a_stream_and_removes_everything(fake: FakeOpenAIProcess, tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", fake)
    with ServedGateway(cdir, tmp_path / "serve.log") as sg:
        sg.wait_stable()
        tree = processes_of(sg.pid)
        assert len(tree) == 4, tree  # two workers, two writers
        run_dir = sg.run_dir()
        assert run_dir.name.startswith("aib-serve-") and (run_dir / "leader.sock").exists()
        first_chunk = threading.Event()
        result: dict[str, Any] = {}

        def stream() -> None:
            client = openai_client(sg.port)
            try:
                texts = []
                for chunk in client.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
                ):
                    first_chunk.set()
                    if chunk.choices and chunk.choices[0].delta.content:
                        texts.append(chunk.choices[0].delta.content)
                result["texts"] = texts
            except Exception as exc:
                result["error"] = exc
            finally:
                first_chunk.set()
                client.close()

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        assert first_chunk.wait(10), "the stream did not start"
        t0 = time.monotonic()
        os.kill(sg.pid, signal.SIGTERM)
        code = sg.wait_exit(30)
        elapsed = time.monotonic() - t0
        thread.join(10)
    assert code == 0, sg.log()[-2000:]
    assert elapsed < 15
    assert "error" not in result, result
    assert len(result["texts"]) == STREAM_CHUNKS, result  # the stream in flight ended whole
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive, alive
    assert processes_of(sg.pid) == []
    assert not run_dir.exists()
    assert "stopping 2 workers" in sg.log()
    with pytest.raises(OSError):
        request(sg.port, "GET", "/health/live", timeout=2)


def test_workers_stop_when_the_supervisor_is_killed(fake: FakeOpenAIProcess, tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", fake)
    sg = ServedGateway(cdir, tmp_path / "serve.log")
    run_dir = None
    try:
        with sg:
            sg.wait_stable()
            tree = processes_of(sg.pid)
            run_dir = sg.run_dir()
            os.kill(sg.pid, signal.SIGKILL)
            assert sg.wait_exit(10) == -signal.SIGKILL
            _, alive = psutil.wait_procs(tree, timeout=20)
            assert not alive, "orphaned workers (and their writers) stop by themselves"
            assert f"the supervisor (pid {sg.pid}) is gone; stopping" in sg.log()
    finally:
        if run_dir is not None:  # nobody is left to remove it
            shutil.rmtree(run_dir, ignore_errors=True)


def test_a_follower_restarts_while_the_files_are_invalid(fake: FakeOpenAIProcess, tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", fake)
    with ServedGateway(cdir, tmp_path / "serve.log") as sg:
        victim = sg.wait_stable()[1]
        (cdir / MAPPINGS_FILE).write_text("models: [m1\n")
        assert request(sg.port, "POST", "/admin/reload").status == 422
        offset = len(sg.log())
        os.kill(victim, signal.SIGKILL)
        sg.wait_log(rf"worker 1 \(pid {victim}\) exited with code -9; restarting it", after=offset)
        try:
            sg.wait_log(rf"worker 1 \(pid (?!{victim}\))\d+\) ready", timeout=6, after=offset)
        except AssertionError as exc:
            pytest.fail(f"worker 1 did not come back: {exc}\n{sg.log()[offset:]}")
        all_ok(chats_on_both(sg.port, "m1"))


def test_a_publish_while_the_followers_start_kills_none(fake: FakeOpenAIProcess, tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", fake)
    sg = ServedGateway(cdir, tmp_path / "serve.log").start()
    try:
        wait_until(lambda: len(sg.workers()) == 2, 30, 0.005, "the workers to be started")
        os.kill(sg.pid, signal.SIGUSR1)  # what the leader's first publish does, a little earlier
        sg.wait_listening()
        sg.wait_stable()
        if "exited with code" in sg.log():
            pytest.fail(sg.log())
    finally:
        sg.stop()


def run_serve(cwd: Path, *args: str, timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [*aib_command(), "serve", "--workers", "2", *args],
        cwd=cwd, env=serve_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return done, time.monotonic() - t0


def test_an_invalid_config_stops_every_worker_with_one_report(
    fake: FakeOpenAIProcess, tmp_path: Path
) -> None:
    cdir = write_config(tmp_path / "config", fake)
    (cdir / MAPPINGS_FILE).write_text("models:\n  m1: {provider: fake\n")
    done, elapsed = run_serve(tmp_path, "-c", "config", "--port", "0")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert elapsed < 30
    assert out.count(f"config/{MAPPINGS_FILE}:2: YAML syntax error") == 1, out
    assert out.count("1 error: configuration not used") == 1, out
    assert "Traceback" not in out
    assert "the leader worker could not start (exit code 2)" in out


def test_workers_with_the_litellm_engine_are_refused(fake: FakeOpenAIProcess, tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", fake)
    done, _ = run_serve(tmp_path, "--engine", "litellm", "-c", str(cdir), "--port", "0")
    assert done.returncode == 2
    assert "--workers is for the native engine" in done.stdout + done.stderr


def test_a_port_in_use_is_refused(fake: FakeOpenAIProcess, tmp_path: Path) -> None:
    cdir = write_config(tmp_path / "config", fake)
    with listening_socket() as port:
        done, elapsed = run_serve(tmp_path, "-c", str(cdir), "--port", str(port))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert elapsed < 30
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out
    assert "Traceback" not in out
