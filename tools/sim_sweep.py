"""The scheduler against consistent hashing on a family of fleets (the README's 54 cells).

    PYTHONPATH=src python tools/sim_sweep.py [--configured]

27 fleets (hosts 2-16, models 2-40, room 1-4, Zipf and flat popularity, a burst, popularity
shifts) x seeds 0 and 1, 30-40 s each, in virtual time.  Prints one line per cell (TTFT
p50/p99, loads, errors for both) and how many cells the scheduler's p99 is above hash's.
``--configured`` tells the gateway each host's slots and room; without it the gateway
learns them, as ``ollamamax serve`` does when the TOML does not say.  Deterministic.
"""

from __future__ import annotations

import argparse

from ollamamax.testing.simulator import simulate
from ollamamax.testing.workload import parse_scenario


def fleets() -> list[str]:
    specs = []
    for hosts, models, room in [(2, 2, 1), (2, 6, 1), (4, 6, 1), (4, 12, 2), (8, 12, 1), (8, 16, 2), (16, 40, 1),
                                (16, 40, 4), (4, 3, 4), (3, 8, 2), (8, 6, 1), (2, 12, 4)]:
        for pop in ("zipf:1.0", "flat"):
            specs.append(f"hosts={hosts},models={models},max_loaded_models={room},popularity={pop},"
                         f"duration=30,rate={2.5 * hosts}")
    specs.append("hosts=4,models=6,duration=40,bursts=10:5:3")
    specs.append("hosts=4,models=6,duration=40,shift_at=20")
    specs.append("hosts=8,models=20,max_loaded_models=2,duration=40,shift_at=15+30,rate=20")
    return specs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configured", action="store_true", help="tell the gateway each host's slots and room")
    args = p.parse_args()
    worse = cells = 0
    for spec in fleets():
        for seed in (0, 1):
            s = parse_scenario(f"{spec},seed={seed}")
            o = simulate(s, "ollamamax", configure_hosts=args.configured).summary()
            h = simulate(s, "hash").summary()
            flag = (o["ttft_p99"] or 0) > (h["ttft_p99"] or 0)
            worse += flag
            cells += 1
            print(f"{spec} seed={seed}: ollamamax p50 {o['ttft_p50']:.2f} p99 {o['ttft_p99']:.2f} loads {o['loads']} "
                  f"errors {o['errors']} | hash p50 {h['ttft_p50']:.2f} p99 {h['ttft_p99']:.2f} loads {h['loads']}"
                  f"{'  WORSE' if flag else ''}", flush=True)
    print(f"ollamamax p99 above hash's in {worse} of {cells} cells")


if __name__ == "__main__":
    main()
