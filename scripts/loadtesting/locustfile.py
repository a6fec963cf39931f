"""Load-test an OpenAI-compatible endpoint with Locust: the gateway, or a provider directly.

Each simulated user sends chat completions in a loop, a share of them streamed. Streams are read to
the end (``data: [DONE]``) and also reported as two extra entries: "time to first token" and
"whole stream". Failures: a status other than 200, a body that is not a completion, a stream
without ``[DONE]`` or with an error event.

    pip install 'ai-backend-unified[test]'        # locust==2.47.0
    AIB_LOAD_MODEL=llama3 locust -f scripts/loadtesting/locustfile.py --host http://127.0.0.1:4000 \
        --headless --users 16 --spawn-rate 4 --run-time 2m --csv var/locust/run

Without ``--headless``, open http://127.0.0.1:8089 for the web UI. Settings (environment):

  AIB_LOAD_MODEL         model name to ask for (default smollm2)
  AIB_LOAD_PROMPT        the user message (default "Say hello in five words.")
  AIB_LOAD_MAX_TOKENS    max_tokens of every request (default 32)
  AIB_LOAD_STREAM_SHARE  share of requests that stream, 0..1 (default 0.5)
  AIB_LOAD_WAIT          seconds a user waits between requests, "MIN,MAX" (default "0.5,2")
  AIB_LOAD_API_KEY       sent as "Authorization: Bearer ..." when set (LiteLLM master key, cloud key)
  AIB_LOAD_REQUESTS      stop after this many requests in all (default 0: run until --run-time)

Against real providers every request costs compute (or money): start with few users and a short
--run-time. Point --host only at endpoints you are allowed to load.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import gevent
from locust import HttpUser, between, task

MODEL = os.environ.get("AIB_LOAD_MODEL", "smollm2")
PROMPT = os.environ.get("AIB_LOAD_PROMPT", "Say hello in five words.")
MAX_TOKENS = int(os.environ.get("AIB_LOAD_MAX_TOKENS", "32"))
STREAM_SHARE = float(os.environ.get("AIB_LOAD_STREAM_SHARE", "0.5"))
WAIT_MIN, WAIT_MAX = (float(x) for x in os.environ.get("AIB_LOAD_WAIT", "0.5,2").split(","))
API_KEY = os.environ.get("AIB_LOAD_API_KEY", "")
STOP_AFTER = int(os.environ.get("AIB_LOAD_REQUESTS", "0"))
PATH = "/v1/chat/completions"


def body(stream: bool) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }


class ChatUser(HttpUser):
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def on_start(self) -> None:
        self.client.headers["content-type"] = "application/json"
        if API_KEY:
            self.client.headers["authorization"] = f"Bearer {API_KEY}"

    @task
    def chat(self) -> None:
        if random.random() < STREAM_SHARE:
            self.stream()
        else:
            self.plain()
        if STOP_AFTER:
            self.count()

    def count(self) -> None:
        """AIB_LOAD_REQUESTS: the whole run ends once that many requests were sent (by all users)."""
        env = self.environment
        done = getattr(env, "aib_requests", 0) + 1
        env.aib_requests = done  # type: ignore[attr-defined]
        if done == STOP_AFTER and env.runner is not None:
            # from another greenlet: quitting stops every user, this one included
            gevent.spawn(env.runner.quit)

    def plain(self) -> None:
        with self.client.post(PATH, json=body(False), name="chat", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            try:
                choices = resp.json()["choices"]
            except (ValueError, KeyError, TypeError):
                resp.failure(f"not a chat completion: {resp.text[:200]}")
                return
            if not choices:
                resp.failure("no choices in the answer")

    def stream(self) -> None:
        t0 = time.perf_counter()
        with self.client.post(
            PATH, json=body(True), name="chat (stream)", stream=True, catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
                return
            first: float | None = None
            done, events, size = False, 0, 0
            for line in resp.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                size += len(line)
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                if first is None:
                    first = time.perf_counter()
                    self.report("time to first token", first - t0, 0)
                events += 1
                if b'"error"' in data and "error" in json.loads(data):
                    resp.failure(f"error event in the stream: {data[:200]!r}")
                    return
            if not done:
                resp.failure(f"stream ended after {events} events without [DONE]")
                return
            self.report("whole stream", time.perf_counter() - t0, size)

    def report(self, name: str, seconds: float, length: int) -> None:
        self.environment.events.request.fire(
            request_type="SSE",
            name=name,
            response_time=seconds * 1000,
            response_length=length,
            exception=None,
            context={},
        )
