"""Operator tools behind `aib demo`, `aib doctor` and `aib monitor`.

Nothing here is on the request path: these modules start and stop processes (:mod:`procs`,
:mod:`demo`), check a setup from the outside (:mod:`doctor`) and watch a running gateway
(:mod:`monitor`, :mod:`monitor_view`). They talk to the gateway over HTTP like any client.
"""
