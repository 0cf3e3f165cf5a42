"""Placement: the pure brain that decides which host serves a request.

``strategies`` order candidate hosts (least-loaded, p2c, round-robin, latency, affinity);
``router`` turns candidates into a :class:`~ollamamax.placement.router.Decision` (take this
host's free slot now, or wait for these hosts, widening after so long).

Nothing here does I/O, reads a clock (``now`` is passed in) or changes the fleet: it reads
``fleet`` state and returns decisions, which the dispatcher carries out.  That is what lets
tests state each rule with hand-built hosts, and a simulator replay traffic through the
same code.
"""
