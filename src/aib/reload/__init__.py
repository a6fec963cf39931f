"""Hot reload of the configuration without dropping a request.

Triggers: a change to either config file (``watcher``), SIGHUP, ``aib reload`` / ``POST /admin/reload``,
``aib rollback`` / ``POST /admin/rollback``. A reload reads both files once, loads, checks and compiles
them off the request path, prints the diff, backs up the files in force, swaps the plan in one step,
probes new and changed providers, and rolls back when a ``critical: true`` model lost its last healthy
deployment. Modules: ``sources`` (read), ``watcher`` (debounce), ``diff``, ``backups``, ``target``
(the :class:`ReloadTarget` protocol), ``native`` (the native gateway's target), ``controller`` (the
steps), ``service`` (watcher, SIGHUP and admin routes wired into a gateway), ``settings``.
"""

from aib.reload.controller import NoConfigDir, ReloadController, ReloadResult
from aib.reload.service import ReloadService, install_reload
from aib.reload.settings import ReloadSettings
from aib.reload.target import Candidate, ReloadTarget, TargetError, Verdict

__all__ = [
    "Candidate",
    "NoConfigDir",
    "ReloadController",
    "ReloadResult",
    "ReloadService",
    "ReloadSettings",
    "ReloadTarget",
    "TargetError",
    "Verdict",
    "install_reload",
]
