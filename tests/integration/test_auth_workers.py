"""Client keys and limits under ``aib serve --workers 2``: one key's rate and in-flight limits hold
across both workers together, and a key revoked in the store is refused by both within a second.

Real processes: the supervisor and its workers, the instant fake upstream, the SQLite key store.
Requests go on a fresh connection each, so either worker may answer (told apart by the request id).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from aib.auth.store import SqliteKeyStore
from aib.config.load import MAPPINGS_FILE
from gateway_harness import FakeOpenAIProcess, fake_openai_process
from reload_support import provider_yaml
from workers_support import ServedGateway, fan_out, request, worker_of

pytestmark = pytest.mark.integration

ADMIN = "adm-workers-" + "5" * 24
STREAM_CHUNKS = 30  # 100 ms apart: a stream holds its place for about three seconds


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIProcess]:
    with fake_openai_process("--chunks", str(STREAM_CHUNKS), "--chunk-delay-ms", "100") as f:
        yield f


@pytest.fixture(scope="module")
def setup(
    fake: FakeOpenAIProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServedGateway, SqliteKeyStore]]:
    root = tmp_path_factory.mktemp("auth-workers")
    cdir = root / "config"
    cdir.mkdir()
    (cdir / "providers.yaml").write_text(provider_yaml({"fake": fake.base_url}, models=("m1",)))
    (cdir / MAPPINGS_FILE).write_text("auth: {mode: keys}\nmodels:\n  m1: {provider: fake}\n")
    store = SqliteKeyStore(root / "keys.db")
    env = {"AIB_KEYS_DB": str(store.path), "AIB_ADMIN_KEY": ADMIN}
    with ServedGateway(cdir, root / "serve.log", env=env) as sg:
        yield sg, store
    store.close()
    assert sg.wait_exit(0) == 0, sg.log()[-3000:]
    assert "Traceback" not in sg.log(), sg.log()[-3000:]


def chat(port: int, secret: str, stream: bool = False) -> tuple[int, str, str]:
    """(status, worker, error code) of one chat on a fresh connection."""
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    r = request(port, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {secret}"}, timeout=20)
    code = r.json()["error"]["code"] if r.status >= 400 else ""
    return r.status, worker_of(r), code


def on_both(port: int, secret: str, max_s: float = 15.0) -> list[tuple[int, str, str]]:
    """Batches of chats on fresh connections until both workers answered (bounded); every reply."""
    replies: list[tuple[int, str, str]] = []
    deadline = time.monotonic() + max_s
    while len({r[1] for r in replies}) < 2 and time.monotonic() < deadline:
        replies += fan_out(lambda _: chat(port, secret), 16, threads=16)
    return replies


def test_a_rate_limit_holds_across_workers(setup: tuple[ServedGateway, SqliteKeyStore]) -> None:
    served, store = setup
    _, secret = store.create("shared-rate", rpm=30)  # usable at once on both workers
    started = time.monotonic()
    replies = fan_out(lambda _: chat(served.port, secret), 120, threads=16)
    took = time.monotonic() - started
    ok = [r for r in replies if r[0] == 200]
    limited = [r for r in replies if r[0] == 429]
    assert len(ok) + len(limited) == 120 and {r[2] for r in limited} == {"requests_per_minute"}
    # the 30 of a full bucket, plus what refilled (1 every 2 s) while the burst ran: never 2 x 30
    assert 30 <= len(ok) <= 30 + int(took / 2) + 1, (len(ok), took)
    # both workers answered: had each its own counters, the one that admitted fewer would still have
    # had a full bucket of its own, and the total would be up to twice the limit
    assert len({r[1] for r in replies}) == 2


def test_requests_in_flight_are_counted_across_workers(setup: tuple[ServedGateway, SqliteKeyStore]) -> None:
    served, store = setup
    _, secret = store.create("shared-conc", concurrency=2)
    streams: list[tuple[int, str, str]] = []
    threads = [
        threading.Thread(target=lambda: streams.append(chat(served.port, secret, stream=True)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both streams have their places (each lasts about three seconds)
    probes: list[tuple[int, str, str]] = []
    deadline = time.monotonic() + 1.5
    while len({p[1] for p in probes}) < 2 and time.monotonic() < deadline:
        probes += fan_out(lambda _: chat(served.port, secret), 8, threads=8)
    for t in threads:
        t.join(20)
    assert [s[0] for s in streams] == [200, 200], streams
    assert {p[0] for p in probes} == {429} and {p[2] for p in probes} == {"concurrent_requests"}
    assert len({p[1] for p in probes}) == 2  # refused by both workers
    assert chat(served.port, secret)[0] == 200  # the places came back


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(
    setup: tuple[ServedGateway, SqliteKeyStore],
) -> None:
    served, store = setup
    key, secret = store.create("soon-gone")
    before = on_both(served.port, secret)
    assert {r[0] for r in before} == {200} and len({r[1] for r in before}) == 2
    store.revoke(key.id)
    time.sleep(1.0)
    after = on_both(served.port, secret)
    assert {r[0] for r in after} == {401} and {r[2] for r in after} == {"revoked_api_key"}
    assert len({r[1] for r in after}) == 2
