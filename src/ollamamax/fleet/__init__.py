"""What the gateway knows about its hosts.

``config`` (:class:`HostConfig`: URL, name, weight, limits, headers); ``snapshot`` (what
each host reported at its last refresh, as immutable :class:`HostView` s in a
:class:`Snapshot`, published through a :class:`SnapshotStore` so the request path reads it
without a lock); ``hosts`` (:class:`HostState`: per-host runtime counters touched on the
request path); ``health`` (outlier ejection and reinstatement); ``learning`` (moving
averages, decaying rates and learned load costs).

This layer does no I/O: it is told what happened (a refresh result, a failure, a
completed request) and keeps the facts.  It imports only ``wire`` and ``structures``.
"""
