"""`aib doctor` for providers of type ``litellm_sdk``: is the LiteLLM SDK adapter installed, and how
does the running gateway see those providers.

The adapter runs inside a gateway (:mod:`aib.engines.sdk_sidecar`) and answers only that gateway (a
token from its environment), so those providers are not probed from here: their state is the one the
gateway's ``/health`` reports (its probes go through the adapter: LiteLLM loaded, the key set, the
model string's provider known; never a completion). Without a running gateway they are not checked.
"""

from __future__ import annotations

from typing import Any

from aib.config.litellm_sdk import find_adapter_python
from aib.config.plan import RoutingPlan
from aib.ops.doctor import Check


def sdk_checks(plan: RoutingPlan, health: dict[str, Any] | None) -> list[Check]:
    """An ``sdk adapter`` check, then one per enabled ``litellm_sdk`` provider (nothing without any).
    ``health``: the running gateway's ``/health`` body, None when none answers."""
    sdk = [p for p in plan.providers.values() if p.sdk is not None and p.enabled]
    if not sdk:
        return []
    names = ", ".join(p.name for p in sdk)
    found = find_adapter_python()
    data = {"python": found.path, "installed": found.installed, "litellm_version": found.version}
    if found.problem:
        checks = [Check("sdk adapter", "fail", f"{names}: {found.problem}", data=data)]
    else:
        where = ", ".join(sorted({p.base_url for p in sdk}))
        msg = f"{names}: LiteLLM {found.version} ({found.how}); the gateway runs the adapter on {where}"
        checks = [Check("sdk adapter", "ok", msg, data=data)]
    states = (health or {}).get("providers") or {}
    for p in sdk:
        name, where = f"provider {p.name}", f"litellm_sdk via {p.base_url}"
        state = states.get(p.name)
        if not isinstance(state, dict):
            why = "the gateway is not running" if health is None else "the running gateway does not know it"
            checks.append(Check(name, "skip", f"{where}: not checked ({why}; its adapter runs inside it)"))
        elif state.get("status") == "healthy":
            checks.append(
                Check(name, "ok", f"{where}: up (as the gateway sees it)", data={"provider": p.name})
            )
        else:
            reason = state.get("last_error") or state.get("status")
            checks.append(Check(name, "fail", f"{where}: down: {reason}", data={"provider": p.name}))
    return checks
