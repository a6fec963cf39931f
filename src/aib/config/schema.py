"""Pydantic models of the two operator-edited files.

``config/providers.yaml``  -> :class:`ProvidersFile`
``config/model-mappings.yaml`` -> :class:`MappingsFile`

Every model forbids unknown keys, so a typo is an error with a line number rather than a silently
ignored setting. Field descriptions become the JSON Schema's documentation (``aib schema``) and the
reference in ``docs/configuration.md``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aib.config.litellm_sdk import DEFAULT_ADAPTER_URL, param_problem

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
ProviderName = Annotated[str, Field(pattern=NAME_RE, max_length=64)]
ModelName = Annotated[str, Field(min_length=1, max_length=200)]

# The request-side prefix that asks for a capability instead of a model ("capability/code").
CAPABILITY_PREFIX = "capability/"
KNOWN_CAPABILITIES = (
    "chat",
    "completion",
    "embeddings",
    "code",
    "vision",
    "tools",
    "reasoning",
    "long_context",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- providers.yaml


class HealthCheck(Strict):
    """How the gateway probes a provider. Only free endpoints are used, never a completion."""

    endpoint: str | None = Field(
        None,
        description="Path probed for liveness. Default by type: ollama /api/tags, llamacpp /v1/models, "
        "vllm /health, openai and openai_compatible /v1/models, anthropic /v1/models, litellm_sdk /health.",
        examples=["/health"],
    )
    interval_s: float = Field(10.0, gt=0, le=3600, description="Seconds between probes.")
    timeout_s: float = Field(2.0, gt=0, le=120, description="Probe timeout in seconds.")
    enabled: bool = Field(True, description="Probe at all. A provider never probed is assumed healthy.")

    @field_validator("endpoint")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/' (a path on the provider's base_url)")
        return v


class ModelSpec(Strict):
    """One model a provider serves. In YAML a bare string is shorthand for ``{name: ...}``."""

    name: ModelName = Field(description="The provider's own name for the model (sent upstream).")
    capabilities: tuple[str, ...] = Field(
        ("chat",),
        description="What the model can do: chat, completion, embeddings, code, vision, tools, reasoning, "
        "long_context (free text is allowed for your own capabilities).",
    )
    context_length: int | None = Field(
        None,
        gt=0,
        description="Context window in tokens. Ollama (native API): sent as options.num_ctx with every request "
        "(Ollama's default context is 2048-4096 tokens and cuts longer prompts without an error); every "
        "type: what Ollama's /api/show on the gateway reports.",
    )
    keep_alive: str | int | None = Field(
        None,
        description="Ollama only: how long the server keeps the model loaded after a request ('10m', "
        "'24h', seconds, -1 for ever, 0 to unload at once); sent with every request unless the client "
        "sets its own.",
        examples=["30m"],
    )
    description: str | None = None


class Tls(Strict):
    """Which certificates an https provider may present."""

    ca_file: str | None = Field(
        None,
        description="PEM file of the CA certificates to trust for this provider instead of the system's "
        "(a lab's internal CA). A relative path is read from the config folder.",
        examples=["certs/lab-ca.pem"],
    )
    verify: bool = Field(
        True,
        examples=[False],
        description="Check the server's certificate and host name. `false` accepts any certificate (a "
        "test bench only: anyone on the path can read the traffic); `aib validate` warns.",
    )


PROXY_DIRECT = "direct"


def _model_list(v: object) -> object:
    if isinstance(v, list):
        return [{"name": m} if isinstance(m, str) else m for m in v]
    return v


class ProviderBase(Strict):
    base_url: str = Field(
        description="Scheme, host and port of the server (no /v1 suffix), e.g. http://127.0.0.1:8000.",
        examples=["http://127.0.0.1:8000"],
    )
    enabled: bool = Field(True, description="A disabled provider is kept in the file but never routed to.")
    description: str | None = Field(None, description="Free text shown in `aib models` and the UI.")
    models: tuple[ModelSpec, ...] = Field((), description="Models this provider serves.")
    discovery: bool = Field(
        False,
        description="Ask the provider which models it serves (/api/tags or /v1/models) and make them "
        "routable under their own names without a config edit.",
    )
    health: HealthCheck = Field(default_factory=HealthCheck)
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of the environment variable holding the API key. The key never goes in the file.",
    )
    max_connections: int = Field(100, gt=0, le=10000, description="Pooled connections to this provider.")
    proxy: str | None = Field(
        None,
        description="HTTP proxy for this provider: an http://host:port URL, or `direct` to never use one. "
        "Unset: HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment (loopback addresses never go "
        "through an environment proxy). https providers are reached through a CONNECT tunnel. Proxy "
        "credentials belong in the environment (HTTPS_PROXY=http://user:password@host:port), not here.",
        examples=["http://proxy.lab.example:3128", "direct"],
    )
    tls: Tls = Field(
        default_factory=Tls, description="TLS of an https provider: the CAs to trust, whether to check."
    )
    hardware: str | None = Field(None, description="Hardware notes (GPU, VRAM), informational.")
    tags: tuple[str, ...] = Field((), description="Free labels, informational.")
    responses_api: bool | None = Field(
        None,
        description="The server has OpenAI's Responses API (POST /v1/responses): requests to the gateway's "
        "/v1/responses are passed on unchanged instead of translated to chat completions. Default: true for "
        "type openai, false otherwise.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models_shorthand(cls, v: object) -> object:
        return _model_list(v)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"URL needs a scheme http:// or https:// (got {v!r})")
        if not parts.hostname:
            raise ValueError(f"URL has no host (got {v!r})")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port in {v!r}: {exc}") from None
        if parts.path.rstrip("/").endswith("/v1"):
            raise ValueError("leave out the /v1 suffix; the gateway adds the API path itself")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _native_settings(self) -> ProviderBase:
        kind = getattr(self, "type", None)
        if kind != "ollama":
            with_keep_alive = [m.name for m in self.models if m.keep_alive is not None]
            if with_keep_alive:
                raise ValueError(f"keep_alive is an Ollama setting (models: {', '.join(with_keep_alive)})")
        if self.responses_api and (getattr(self, "api", "openai") == "native" or kind == "litellm_sdk"):
            raise ValueError(
                "responses_api needs the server's OpenAI-compatible API: set `api: openai` (or leave "
                "responses_api out)"
            )
        return self

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is None or v == PROXY_DIRECT:
            return v
        parts = urlsplit(v)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"give an http://host:port URL or `{PROXY_DIRECT}` (got {v!r})")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "no credentials in the file: put the proxy in HTTPS_PROXY / HTTP_PROXY "
                "(http://user:password@host:port) and leave `proxy` unset"
            )
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port in {v!r}: {exc}") from None
        return v.rstrip("/")

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return (parts.hostname or "", port)


class Signals(Strict):
    """Backend signals: what the server itself says about its load, read from free endpoints (never a
    completion). Ollama: `GET /api/ps` (models loaded in memory); llama.cpp: `GET /metrics`
    (`llamacpp:requests_processing`, `llamacpp:requests_deferred`; llama-server started with
    `--metrics`), else `GET /slots`; vLLM: `GET /metrics` (`vllm:num_requests_running`,
    `vllm:num_requests_waiting`, KV-cache usage). A server that has none of them (llama-cpp-python) is
    polled once a minute to see whether that changed; the strategies then use the gateway's own counts."""

    enabled: bool = Field(True, description="Poll the server's signals at all.")
    interval_s: float = Field(2.0, gt=0, le=3600, description="Seconds between two polls.")
    timeout_s: float = Field(1.0, gt=0, le=60, description="Time limit of one poll.")
    stale_after_s: float = Field(
        10.0,
        gt=0,
        le=86400,
        description="Age at which a reading counts for nothing. A reading counts fully while younger "
        "than interval_s + timeout_s, then less and less (linearly) until this age; load-aware strategies "
        "then use only the gateway's own in-flight count.",
    )

    @model_validator(mode="after")
    def _stale_after_interval(self) -> Signals:
        if self.stale_after_s <= self.interval_s + self.timeout_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be longer than interval_s + timeout_s "
                f"({self.interval_s + self.timeout_s:g}), or no reading would ever count fully"
            )
        return self


class OllamaProvider(ProviderBase):
    """An Ollama server: requests through its native API (/api/chat, /api/generate, /api/embed, with
    options.num_ctx from the model's context_length), discovery through /api/tags."""

    type: Literal["ollama"]
    api: Literal["native", "openai"] = Field(
        "native",
        description="native: Ollama's own API, which honours num_ctx and keep_alive; openai: its "
        "OpenAI-compatible /v1, which ignores num_ctx (prompts past the server's default context are cut).",
    )
    signals: Signals = Field(
        default_factory=Signals,
        description="How the gateway polls the server's own load and loaded models (see "
        "`providers.<name>.signals`); least_loaded, loaded_first and prefix_affinity use them.",
    )


class LlamaCppProvider(ProviderBase):
    """A llama.cpp server (llama-server or llama-cpp-python): OpenAI-compatible."""

    type: Literal["llamacpp"]
    signals: Signals = Field(
        default_factory=Signals,
        description="How the gateway polls the server's own load and loaded models (see "
        "`providers.<name>.signals`); least_loaded, loaded_first and prefix_affinity use them.",
    )


class VllmProvider(ProviderBase):
    """A vLLM OpenAI-compatible server."""

    type: Literal["vllm"]
    signals: Signals = Field(
        default_factory=Signals,
        description="How the gateway polls the server's own load and loaded models (see "
        "`providers.<name>.signals`); least_loaded, loaded_first and prefix_affinity use them.",
    )


class OpenAIProvider(ProviderBase):
    """The OpenAI API (or anything that needs a bearer key and speaks its API)."""

    type: Literal["openai"]
    base_url: str = "https://api.openai.com"
    organization: str | None = None


class AnthropicProvider(ProviderBase):
    """Anthropic's Messages API (/v1/messages), called directly by the gateway."""

    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api: Literal["native", "openai"] = Field(
        "native",
        description="native: the Messages API (tools, system blocks, stop reasons, cache usage); openai: "
        "Anthropic's OpenAI SDK compatibility endpoint (/v1/chat/completions).",
    )
    max_tokens: int = Field(
        4096,
        gt=0,
        description="native: max_tokens sent when a request gives none (the Messages API requires it).",
    )


class OpenAICompatibleProvider(ProviderBase):
    """Any other server that speaks the OpenAI API (TGI, LocalAI, LM Studio, a custom server)."""

    type: Literal["openai_compatible"]
    api_prefix: str = Field("/v1", description="Path prefix of the OpenAI API on this server.")


LiteLLMParam = str | int | float | bool


class LiteLLMSdkProvider(ProviderBase):
    """A provider called through the LiteLLM SDK (Bedrock, Vertex, Anthropic's own API, ...): the gateway
    runs the LiteLLM SDK adapter on `base_url` (loopback) and talks OpenAI-compatible HTTP to it."""

    type: Literal["litellm_sdk"]
    base_url: str = Field(
        DEFAULT_ADAPTER_URL,
        description="For litellm_sdk: the loopback address (http://127.0.0.1:PORT, port free) where the "
        "gateway runs the adapter; providers with the same address share one adapter process.",
    )
    litellm_model: str | dict[ModelName, Annotated[str, Field(min_length=1)]] = Field(
        description="The LiteLLM model string: a template where {model} is the model name a route sends "
        "(anthropic/{model}), one fixed string for every model, or a mapping model name -> model string.",
        examples=["anthropic/{model}"],
    )
    api_base: str | None = Field(
        None,
        description="Upstream URL handed to LiteLLM as api_base. Default: LiteLLM's own for that provider.",
        examples=["https://api.anthropic.com"],
    )
    timeout_s: float = Field(
        600.0, gt=0, le=86400, description="Time limit LiteLLM gets for one upstream call.", examples=[120]
    )
    drop_params: bool = Field(
        True,
        description="Drop request fields the upstream does not support (LiteLLM's drop_params) instead of "
        "answering 400.",
        examples=[False],
    )
    litellm_params: dict[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")], LiteLLMParam] = Field(
        {},
        description="Extra keyword arguments of every LiteLLM call (e.g. aws_region_name). No credentials: "
        "those come from the environment.",
        examples=[{"aws_region_name": "eu-west-1"}],
    )

    @field_validator("base_url")
    @classmethod
    def _loopback(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                "the adapter runs on this machine: use http://127.0.0.1:PORT (the upstream's URL goes in "
                "`api_base`)"
            )
        if not parts.port or parts.path.strip("/"):
            raise ValueError("give the adapter's port and no path, e.g. http://127.0.0.1:4010")
        return v

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        if v is not None and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError(f"api_base must be an http:// or https:// URL (got {v!r})")
        return v

    @field_validator("litellm_model")
    @classmethod
    def _model(cls, v: str | dict[str, str]) -> str | dict[str, str]:
        if isinstance(v, str) and not v.strip():
            raise ValueError("give the LiteLLM model string, e.g. anthropic/{model}")
        if isinstance(v, dict) and not v:
            raise ValueError("the mapping is empty; map each model name to a LiteLLM model string")
        return v

    @field_validator("litellm_params")
    @classmethod
    def _params(cls, v: dict[str, LiteLLMParam]) -> dict[str, LiteLLMParam]:
        for name in v:
            problem = param_problem(name)
            if problem:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _sdk(self) -> LiteLLMSdkProvider:
        if self.discovery:
            raise ValueError("discovery is not available for litellm_sdk providers; list their models")
        if isinstance(self.litellm_model, dict):
            unmapped = [m.name for m in self.models if m.name not in self.litellm_model]
            if unmapped:
                raise ValueError(f"litellm_model has no entry for {', '.join(unmapped)}")
        return self


Provider = Annotated[
    OllamaProvider
    | LlamaCppProvider
    | VllmProvider
    | OpenAIProvider
    | AnthropicProvider
    | OpenAICompatibleProvider
    | LiteLLMSdkProvider,
    Field(discriminator="type"),
]
PROVIDER_TYPES = ("ollama", "llamacpp", "vllm", "openai", "anthropic", "openai_compatible", "litellm_sdk")


class ProvidersFile(Strict):
    """``config/providers.yaml``."""

    version: Literal[1] = Field(1, description="File format version.")
    providers: dict[ProviderName, Provider] = Field(description="Providers by name.")


# --------------------------------------------------------------------------- model-mappings.yaml

Strategy = Literal[
    "round_robin",
    "weighted",
    "least_outstanding",
    "latency",
    "least_loaded",
    "loaded_first",
    "prefix_affinity",
]
# what loaded_first (and prefix_affinity, for requests without a key) fall back on to order the rest
TieBreak = Literal["round_robin", "weighted", "least_outstanding", "latency", "least_loaded"]


class Timeouts(Strict):
    """Per-attempt and total time limits, in seconds."""

    connect_s: float = Field(2.0, gt=0, le=600, description="TCP connect, per attempt.")
    first_byte_s: float = Field(
        120.0, gt=0, le=3600, description="From sending the request to the first response byte, per attempt."
    )
    total_s: float = Field(600.0, gt=0, le=86400, description="Whole request across all attempts.")


class TimeoutsPatch(Strict):
    connect_s: float | None = Field(None, gt=0, le=600)
    first_byte_s: float | None = Field(None, gt=0, le=3600)
    total_s: float | None = Field(None, gt=0, le=86400)


class Retries(Strict):
    max_attempts: int = Field(
        3, ge=1, le=20, description="Upstream attempts per request, across deployments and fallbacks."
    )
    retry_on_status: tuple[Annotated[int, Field(ge=100, le=599)], ...] = Field(
        (429, 500, 502, 503, 504), description="Upstream statuses that move on to the next candidate."
    )


class Breaker(Strict):
    failure_threshold: int = Field(
        5, ge=1, le=1000, description="Consecutive failures that open the breaker."
    )
    cooldown_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds the breaker stays open before one trial request."
    )


class Balance(Strict):
    """Knobs of the strategies that use backend signals and affinity."""

    affinity_epsilon: float = Field(
        0.25,
        gt=0,
        le=10,
        description="prefix_affinity: a deployment whose load is at or above (1 + affinity_epsilon) times "
        "the mean load (counting this request) passes the request on to the next deployment on the hash "
        "ring. Smaller keeps loads closer together; larger keeps conversations on their own server longer.",
    )
    tie_break: TieBreak = Field(
        "least_loaded",
        description="loaded_first: how deployments with the model equally loaded (or not) are ordered; "
        "prefix_affinity: how requests that carry no key (no x-session-id, no `user`, no messages) are "
        "balanced.",
    )


class BalancePatch(Strict):
    """A route's own strategy knobs; each key left out keeps `defaults.balance`."""

    affinity_epsilon: float | None = Field(
        None, gt=0, le=10, description="This route's `defaults.balance.affinity_epsilon`."
    )
    tie_break: TieBreak | None = Field(None, description="This route's `defaults.balance.tie_break`.")


CacheWhen = Literal["deterministic", "always"]
CacheScope = Literal["key", "shared"]


class CacheRule(Strict):
    """The response cache of a route (exact match on the request; docs/scaling.md)."""

    enabled: bool = Field(False, description="Answer repeated requests from the cache.")
    ttl_s: float = Field(3600.0, gt=0, le=30 * 86400, description="Seconds an answer stays in the cache.")
    when: CacheWhen = Field(
        "deterministic",
        description="deterministic: only requests with temperature 0 or a seed (and every embeddings "
        "request); always: every request (a repeated question gets the first answer).",
    )
    scope: CacheScope = Field(
        "key",
        description="key: with client keys on, each key's name has its own entries (no answer crosses "
        "between tenants); shared: every client shares the route's entries.",
    )


class CacheRulePatch(Strict):
    """A route's changes to ``defaults.cache``."""

    enabled: bool | None = Field(None, description="Cache this route's answers (default: defaults.cache).")
    ttl_s: float | None = Field(None, gt=0, le=30 * 86400, description="Seconds an answer stays cached.")
    when: CacheWhen | None = Field(None, description="deterministic or always (see defaults.cache).")
    scope: CacheScope | None = Field(None, description="key or shared (see defaults.cache).")


class Defaults(Strict):
    strategy: Strategy = Field(
        "round_robin",
        description="How a group's deployments are ordered for each request. round_robin: in turn; "
        "weighted: in proportion to `weight`; least_outstanding: fewest requests in flight from this "
        "gateway; latency: lowest time-to-first-byte average; least_loaded: fewest requests running and "
        "waiting on the server itself (backend signals), else fewest in flight; loaded_first: servers that "
        "have the model in memory first, then `balance.tie_break`; prefix_affinity: the same conversation "
        "(x-session-id header, `user` field, or system prompt + first user turn) to the same deployment, "
        "by consistent hashing with bounded load.",
    )
    balance: Balance = Field(
        default_factory=Balance,
        description="Knobs of the loaded_first and prefix_affinity strategies (a route's `balance` "
        "overrides single values).",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: Retries = Field(default_factory=Retries)
    breaker: Breaker = Field(default_factory=Breaker)
    cache: CacheRule = Field(
        default_factory=CacheRule,
        description="The response cache of every route that sets none (off by default).",
    )


class Deployment(Strict):
    """One place a model can be served: a provider and the provider's name for it."""

    provider: ProviderName
    upstream: ModelName | None = Field(
        None, description="The provider's model name. Default: the route name."
    )
    weight: float = Field(1.0, ge=0, description="Share of traffic under the 'weighted' strategy.")


class Route(Strict):
    """A model name clients ask for. One deployment, or several forming a load-balanced group."""

    provider: ProviderName | None = Field(None, description="Shorthand for a single deployment.")
    upstream: ModelName | None = Field(None, description="With `provider`: the provider's model name.")
    deployments: tuple[Deployment, ...] = Field((), description="Several deployments: a load-balanced group.")
    strategy: Strategy | None = Field(None, description="Load-balancing strategy; default from `defaults`.")
    balance: BalancePatch | None = Field(
        None, description="Knobs of loaded_first and prefix_affinity; unset ones from `defaults.balance`."
    )
    aliases: tuple[ModelName, ...] = Field((), description="Other names that resolve to this route.")
    fallbacks: tuple[ModelName, ...] = Field((), description="Routes tried, in order, when this one fails.")
    timeouts: TimeoutsPatch | None = None
    max_attempts: int | None = Field(None, ge=1, le=20)
    critical: bool = Field(
        False, description="A reload that leaves this route with no healthy deployment is rolled back."
    )
    params: dict[str, object] = Field(
        {}, description="Request fields set when the client did not send them (e.g. max_tokens)."
    )
    cache: CacheRulePatch | None = Field(None, description="This route's changes to `defaults.cache`.")
    description: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Route:
        if self.provider and self.deployments:
            raise ValueError("give either `provider` (one deployment) or `deployments` (a group), not both")
        if not self.provider and not self.deployments:
            raise ValueError("a route needs `provider` or `deployments`")
        if self.upstream and not self.provider:
            raise ValueError("`upstream` goes with `provider`; in a group set it per deployment")
        if "model" in self.params or "stream" in self.params:
            raise ValueError("params may not set `model` or `stream`")
        return self


class Pattern(Strict):
    """A glob on the requested name, e.g. ``ollama/*`` -> provider ollama, upstream = the ``*`` part."""

    match: str = Field(description="Glob with `*` (any run of characters) and `?` (one character).")
    provider: ProviderName
    upstream: str = Field(
        "{1}",
        description="Upstream name template: {0} the whole requested name, {1}, {2}, ... the wildcards.",
    )
    fallbacks: tuple[ModelName, ...] = ()
    description: str | None = None

    @field_validator("match")
    @classmethod
    def _glob(cls, v: str) -> str:
        if "*" not in v and "?" not in v:
            raise ValueError("a pattern needs a wildcard (* or ?); put a plain name under `models`")
        return v

    @model_validator(mode="after")
    def _template(self) -> Pattern:
        n = self.match.count("*") + self.match.count("?")
        for ref in re.findall(r"\{([^}]*)\}", self.upstream):
            if not ref.isdigit() or int(ref) > n:
                raise ValueError(f"upstream template {{{ref}}} is not one of {{0}}..{{{n}}}")
        return self


class CapabilityRule(Strict):
    """Which routes answer ``capability/<name>``. Without `prefer`, every route whose models have it."""

    prefer: tuple[ModelName, ...] = Field((), description="Routes to try first, in order.")
    only_preferred: bool = Field(False, description="Do not add other routes that have the capability.")


class Auth(Strict):
    """Who may use the gateway. See docs/security.md."""

    mode: Literal["none", "keys"] = Field(
        "none",
        description="none: anyone who reaches the port (allowed only while the gateway listens on "
        "loopback); keys: every API request needs a client key (`aib keys create NAME`), which says "
        "which models it may use and its limits.",
    )
    reserve_tokens: int = Field(
        1024,
        ge=1,
        le=10_000_000,
        description="Tokens a request that sets no max_tokens reserves for its answer against a key's "
        "tokens per minute and budgets, until its real usage is known.",
    )
    store: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="Where keys, limit counters, budgets and usage live. sqlite: a file beside the "
        "request log (one machine); redis: the `redis` section's server, shared by every replica.",
    )


class CacheStore(Strict):
    """Where cached answers live. Which routes cache is `defaults.cache` and each route's `cache`."""

    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="memory: in each gateway process (least recently used entries go first); redis: "
        "the `redis` section's server, shared by every replica and worker.",
    )
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=64 * 1024**3,
        description="memory: the bytes of answers kept per process (Redis bounds itself: maxmemory).",
    )
    max_entry_bytes: int = Field(
        1024 * 1024,
        ge=256,
        le=64 * 1024 * 1024,
        description="Larger answers are not cached.",
    )


class Sentinel(Strict):
    """Redis Sentinel: the sentinels to ask, and the name of the master they watch."""

    master: str = Field(min_length=1, description="The master's name in the sentinels' configuration.")
    nodes: tuple[Annotated[str, Field(pattern=r"^[^\s:]+:\d{1,5}$")], ...] = Field(
        min_length=1, description="Sentinels as host:port.", examples=[["10.0.0.5:26379", "10.0.0.6:26379"]]
    )


class RedisSettings(Strict):
    """The Redis server replicas share (docs/scaling.md)."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://host:port/db, rediss:// (TLS) or unix:///path/redis.sock?db=0; with "
        "`sentinel`, only the database, user and TLS are taken from it. No password here: use "
        "`password_env`.",
    )
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of the environment variable holding the Redis password.",
    )
    key_prefix: str = Field(
        "aib:", max_length=64, description="Put before every Redis key the gateway writes."
    )
    connect_timeout_s: float = Field(0.5, gt=0, le=30, description="Connecting to Redis.")
    timeout_s: float = Field(
        0.25,
        gt=0,
        le=30,
        description="Each Redis command on the request path; slower counts as Redis being down.",
    )
    on_redis_error: Literal["allow", "deny"] = Field(
        "allow",
        description="While Redis cannot be reached: allow requests without checking keys' limits (one "
        "warning and aib_redis_errors_total), or deny them (503). The cache is bypassed either way.",
    )
    max_connections: int = Field(
        256,
        ge=1,
        le=10_000,
        description="Connections per gateway process; a request finding all busy skips Redis (counted).",
    )
    cluster: bool = Field(False, description="`url` is one node of a Redis Cluster.")
    sentinel: Sentinel | None = Field(None, description="Find the master through Redis Sentinel.")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"use redis://, rediss:// or unix:// (got {v!r})")
        if parts.password:
            raise ValueError(
                "the URL holds a password: put it in an environment variable and name that variable in "
                "`password_env`"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"URL has no host (got {v!r})")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"give the socket's path: unix:///path/to/redis.sock (got {v!r})")
        return v

    @model_validator(mode="after")
    def _modes(self) -> RedisSettings:
        if self.cluster and self.sentinel is not None:
            raise ValueError("give `cluster` or `sentinel`, not both")
        if self.cluster and urlsplit(self.url).scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP: redis:// or rediss://")
        return self


class MappingsFile(Strict):
    """``config/model-mappings.yaml``."""

    version: Literal[1] = 1
    auth: Auth = Field(default_factory=Auth, description="Client keys and limits (docs/security.md).")
    redis: RedisSettings | None = Field(
        None, description="The Redis server for `auth.store: redis` and `cache.backend: redis`."
    )
    cache: CacheStore = Field(
        default_factory=CacheStore, description="Where cached answers live (docs/scaling.md)."
    )
    defaults: Defaults = Field(default_factory=Defaults)
    models: dict[ModelName, Route] = Field({}, description="Routes by the name clients ask for.")
    aliases: dict[ModelName, ModelName] = Field({}, description="Extra names -> route name.")
    patterns: tuple[Pattern, ...] = Field(
        (),
        description="Tried in order after exact names, aliases, discovered models and `capability/` names.",
    )
    capabilities: dict[str, CapabilityRule] = Field({}, description="Rules for `capability/<name>` requests.")
    fallbacks: dict[ModelName, tuple[ModelName, ...]] = Field(
        {}, description="Fallback chains by route name (added after a route's own `fallbacks`)."
    )
    default_fallbacks: tuple[ModelName, ...] = Field(
        (), description="Tried for every route after its own chain (e.g. a small always-on model)."
    )
