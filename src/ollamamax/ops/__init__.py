"""Operations: running the gateway and seeing inside it.

``serve`` (the ``ollamamax serve`` command: arguments, workers, signals, shutdown),
``config`` (TOML, environment and command line onto one configuration), ``app``
(``create_app``: the gateway application with observability), ``metrics`` (Prometheus
``/metrics`` and the status routes), ``statuspage`` (the HTML page), ``gcstats`` (GC pause
recording and tuning).  The top layer under the CLI: it may import every layer below it.
"""
