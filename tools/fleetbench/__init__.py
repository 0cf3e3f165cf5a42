"""Helpers of the fleet benchmarks (``tools/bench_fleet.py``, ``tools/bench_hot_model.py``).

Owns nothing of ollamamax itself: :mod:`.procs` starts and stops the processes a run needs
(emulated hosts, gateways, nginx), pinned and by PID; :mod:`.replay` drives a seeded trace
through one target, open loop; :mod:`.report` turns what was measured into figures and
markdown tables. The traces themselves come from :mod:`ollamamax.testing.workload`.
"""
