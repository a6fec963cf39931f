"""What a reload switches: the :class:`ReloadTarget` protocol, and the candidate it switches to.

The controller builds a :class:`Candidate` (plan, validated files, the rendered LiteLLM config) off the
request path, then asks every target, in order, to :meth:`~ReloadTarget.activate` it, then to
:meth:`~ReloadTarget.verify` it. A target that cannot activate raises :class:`TargetError`; a
verification that finds a problem (:attr:`Verdict.problems`) rolls every activated target back with
:meth:`~ReloadTarget.revert`, in reverse order.

Two kinds implement it: the native gateway (:class:`aib.reload.native.NativeTarget`: swap one plan
reference) and the LiteLLM engine's supervisor (start a new LiteLLM process on
``candidate.litellm_yaml``, wait until it is ready, move traffic to it, stop the old one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aib.config.load import LoadedConfig
from aib.config.plan import RoutingPlan
from aib.reload.sources import Sources


@dataclass(frozen=True)
class Candidate:
    """One version of the configuration, ready to serve."""

    plan: RoutingPlan
    config: LoadedConfig
    sources: Sources  # the bytes both were built from
    litellm_yaml: str  # config/litellm-unified.yaml for these files

    @property
    def version(self) -> str:
        return self.plan.version


@dataclass
class Verdict:
    """What a target found after switching. ``problems`` roll the reload back; ``notes`` are reported."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probes: dict[str, str] = field(default_factory=dict)  # provider -> "up" or why not

    def merge(self, other: Verdict) -> None:
        self.problems += other.problems
        self.notes += other.notes
        self.probes.update(other.probes)

    def as_dict(self) -> dict[str, Any]:
        return {"problems": self.problems, "notes": self.notes, "probes": self.probes}


class TargetError(Exception):
    """A target could not switch to the candidate; it must still serve what it served before."""


@runtime_checkable
class ReloadTarget(Protocol):
    name: str

    async def activate(self, candidate: Candidate) -> None:
        """Serve ``candidate`` to new requests from now on; requests in flight finish on the old one.

        Return only when the switch is done. Raise :class:`TargetError` (the old one still serving)
        when it cannot be done.
        """

    async def verify(self, candidate: Candidate, previous: Candidate, timeout_s: float) -> Verdict:
        """Check, within ``timeout_s``, that the switch did not break what must keep working."""

    async def revert(self, previous: Candidate) -> None:
        """Serve ``previous`` again (after a failed verification or another target's failure)."""
