"""The fleet scheduler's simulator figures in the README, reproduced in one run (virtual time).

    PYTHONPATH=src python tools/sim_figures.py

Prints: the loads-vs-p99 frontier on the fleet-scheduler issue's trace (the scheduler at
several deadlines, ``patience``, and with its protection of models in steady use off or
wider, the clairvoyant planner at several margins, consistent hash,
round-robin, the no-load-cost floor); the room-for-every-model fleet (8 hosts x 16 models,
2 resident each) after warm-up; the prompt-cache fleet.  Deterministic: the same figures on
any machine.  Loopback-free (no sockets at all).
"""

from ollamamax.testing.simulator import simulate, percentile
from ollamamax.testing.workload import parse_scenario, Scenario
from ollamamax.placement.planner import PlannerPolicy
s=Scenario(seed=0)
print("frontier (default scenario, seed 0, configured hosts): policy -> loads, p50, p99")
for kw in ({"patience":0.4},{"patience":0.6},{},{"patience":1.2},{"patience":2.0},{"patience":4.0},
           {"protect":1e9},{"protect":2.9}):
    x=simulate(s,"ollamamax",policy=PlannerPolicy(**kw),configure_hosts=True).summary()
    print(f"  ollamamax {kw or 'default'}: loads {x['loads']} p50 {x['ttft_p50']:.3f} p99 {x['ttft_p99']:.2f}",flush=True)
x=simulate(s,"ollamamax").summary(); print(f"  ollamamax default, learning: loads {x['loads']} p50 {x['ttft_p50']:.3f} p99 {x['ttft_p99']:.2f} errors {x['errors']}")
for m in (0.0,2.0,5.0,10.0,20.0):
    x=simulate(s,"clairvoyant",margin=m,configure_hosts=True).summary()
    print(f"  clairvoyant margin={m}: loads {x['loads']} p50 {x['ttft_p50']:.3f} p99 {x['ttft_p99']:.2f}",flush=True)
for r in ("hash","round-robin","floor"):
    x=simulate(s,r).summary(); print(f"  {r}: loads {x['loads']} p50 {x['ttft_p50']:.3f} p99 {x['ttft_p99']:.2f}")
print("room for every model: 8 hosts x 16 models, 2 resident each, 16 req/s, 60 s")
s2=parse_scenario("hosts=8,models=16,max_loaded_models=2,rate=16,duration=60,seed=0")
for r,kw in (("ollamamax",{}),("ollamamax",{"configure_hosts":True}),("hash",{}),("floor",{})):
    res=simulate(s2,r,**kw); t=res.ttfts(lambda o:o.at>=20)
    print(f"  {r} {kw}: after 20 s p50 {percentile(t,.5):.3f} p99 {percentile(t,.99):.3f}; all p99 {res.summary()['ttft_p99']:.2f}; loads {res.loads} evictions {res.evictions} errors {res.summary()['errors']}",flush=True)
print("prompt cache: default scenario + prompt_eval_tps=400, user_words=40, max_turns=12")
s3=parse_scenario("prompt_eval_tps=400,user_words=40,max_turns=12,seed=0")
for r in ("ollamamax","hash","round-robin"):
    x=simulate(s3,r).summary(); print(f"  {r}: continued p50 {x['continued_p50']:.3f} first p50 {x['first_p50']:.3f} p99 {x['ttft_p99']:.2f} loads {x['loads']}",flush=True)
