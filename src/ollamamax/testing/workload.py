"""Seeded traces of a fleet's traffic: the one definition of a fleet scenario and its requests.

Owns: :class:`Scenario` (the fleet's hosts and their knobs, the models and their
popularity, the arrival process, conversations, bursts and popularity shifts), its
string and command-line forms (:func:`parse_scenario`, :meth:`Scenario.spec`,
:func:`add_scenario_arguments`, :meth:`Scenario.from_args`), :func:`make_trace`, which
turns a scenario into a list of :class:`TraceRequest` sorted by arrival time, and
:func:`summary`. The virtual-time fleet simulator and ``tools/bench_fleet.py`` (real
processes) replay the same traces, so a scenario means the same traffic in both. It must
stay pure and deterministic: no I/O, no clock, no global random state (every draw comes
from a ``random.Random`` seeded from ``Scenario.seed``), and no imports from the rest of
ollamamax, so that the simulator, the benchmark and the tests can all depend on it.

The trace, precisely:

* **Arrivals** are an open-loop Poisson process of ``rate`` requests/s over ``[0, duration)``,
  its rate multiplied inside each burst ``(start, length, multiplier)`` (overlapping bursts
  multiply; a multiplier of 0 is a lull). The rate is piecewise constant, so each piece
  draws exponential gaps at its own rate (exact, no thinning).
* **Models** are drawn by popularity over a *rank order*: ``zipf:S`` gives rank ``k``
  (1-based) the weight ``1 / k**S``, ``flat`` equal weights. The initial order is
  ``models`` as given (the first is the most popular); at each time in ``shift_at`` the
  order is permuted at random (seeded), and the most popular model always changes.
* **Conversations**: a request continues an earlier conversation of its model with
  probability ``continue_share``, picked uniformly among that model's conversations
  that have fewer than ``max_turns`` turns and whose last turn began at least ``min_gap``
  seconds earlier; when there is none it starts a new conversation (so the realised
  share can fall a little below ``continue_share`` at the start or with few turns
  allowed). Conversation ids count from 0 in order of their first turn.
* **User messages** are ``user_words`` words drawn from a fixed vocabulary. The trace
  holds only each turn's new user message: a replayer keeps each conversation's history
  (user messages and the replies it actually got) and sends all of it with the new
  message, as a chat client does.

Arrivals, model choices, conversation choices, texts and shifts each draw from their own
random stream (derived from ``seed`` and a label), so changing one knob, e.g.
``continue_share``, leaves the arrival times of the same seed unchanged. The host knobs
(``max_loaded_models`` ... ``vram``) do not affect the trace; they describe the emulated
hosts a replayer starts (``ollamamax mock`` flags of the same names).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "DEFAULT_MODELS",
    "MAX_REQUESTS",
    "MODEL_POOL",
    "Scenario",
    "TraceRequest",
    "add_scenario_arguments",
    "make_trace",
    "model_shares",
    "parse_scenario",
    "percentile",
    "popularity_order",
    "rate_at",
    "summary",
]

# Chat models the emulator knows (none embedding-only); ``models=N`` takes the first N.
MODEL_POOL: tuple[str, ...] = (
    "llama3.2", "qwen3:0.6b", "mistral", "gemma3", "phi4", "llava",
    "llama3.1", "gemma3:12b", "phi3", "mistral-nemo", "codellama", "tinyllama",
    "smollm2", "granite3", "starcoder2", "llama3", "llama2", "phi4-mini",
    "moondream", "minicpm-v", "olmo", "deepseek-coder", "codegemma", "gemma",
    "llama3.2:1b", "qwen2", "gemma3n", "smollm", "granite", "qwen2:1.5b",
    "gemma3:1b", "phi3:14b", "mistral:v0.3", "llama2:13b", "codellama:13b", "llava:13b",
    "tinyllama:chat", "smollm2:360m", "granite3:2b", "olmo:13b",
)  # fmt: skip
DEFAULT_MODELS: tuple[str, ...] = MODEL_POOL[:6]
MAX_REQUESTS = 1_000_000  # a trace longer than this is a mistake in the scenario

_WORDS: tuple[str, ...] = (
    "why", "how", "what", "explain", "the", "a", "sky", "blue", "light", "river", "code",
    "python", "list", "sort", "fast", "slow", "cache", "memory", "model", "token", "write",
    "short", "poem", "about", "rain", "city", "night", "train", "history", "of", "rome",
    "compare", "two", "ideas", "simple", "words", "please", "again", "more", "detail",
    "summary", "table", "numbers", "prime", "graph", "tree", "search", "error", "fix",
    "bug", "test", "plan", "trip", "food", "recipe", "bread", "coffee", "music", "song",
    "chess", "move", "next", "step", "then",
)  # fmt: skip


def _models_from(value: int | str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, bool):
        raise TypeError("models: a count or a list of names")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            n = int(text)
        else:
            return tuple(m.strip() for m in text.replace("|", "+").split("+") if m.strip())
    else:
        return tuple(str(m) for m in value)
    if n < 1:
        raise ValueError(f"models: at least 1, got {n}")
    if n <= len(MODEL_POOL):
        return MODEL_POOL[:n]
    return MODEL_POOL + tuple(f"model-{i:03d}" for i in range(len(MODEL_POOL), n))


def _popularity_exponent(popularity: str) -> float:
    """``"flat"`` -> 0.0; ``"zipf"`` -> 1.0; ``"zipf:S"`` -> S (S >= 0)."""
    p = popularity.strip().lower()
    if p == "flat":
        return 0.0
    if p == "zipf":
        return 1.0
    if p.startswith("zipf:"):
        try:
            s = float(p[5:])
        except ValueError:
            s = float("nan")
        if math.isfinite(s) and s >= 0:
            return s
    raise ValueError(f"popularity: 'flat', 'zipf' or 'zipf:S' with S >= 0, got {popularity!r}")


@dataclass(frozen=True)
class Scenario:
    """A fleet and its traffic. The defaults are the scenario of the fleet-scheduler issue:
    4 hosts, 6 models with Zipf(1.0) popularity, 10 requests/s for 60 s, half the requests
    continuing a conversation; per host 1 resident model, 2 slots, 1.5 s loads, 100
    tokens/s, 20-token answers.

    * ``hosts``: emulated hosts, each with every model on disk. ``models``: names, most
      popular first (a count N at construction or in the string form: the first N of
      :data:`MODEL_POOL`).
    * ``popularity``: ``zipf:S`` (rank k has weight 1/k**S), ``zipf`` (S = 1) or ``flat``.
    * ``rate`` (requests/s, Poisson, open loop) over ``duration`` seconds.
    * ``continue_share``: probability that a request continues a conversation of its
      model; ``max_turns``: turns per conversation at most; ``min_gap``: seconds between
      two turns of one conversation at least (the user reads the reply first).
    * ``user_words``: words per user message (longer ones make history, and so prompt
      evaluation, grow faster).
    * ``bursts``: ``(start, length, multiplier)`` each; ``shift_at``: times at which the
      popularity order is permuted. ``seed``: the trace's seed (also given to the hosts).
    * Host knobs: ``max_loaded_models``, ``num_parallel`` (slots per model),
      ``load_delay`` (seconds), ``tokens_per_sec``, ``response_tokens`` (every answer's
      length), ``prompt_eval_tps`` (0: the emulator's default pace, no prompt cache),
      ``vram`` (bytes, 0: no memory limit)."""

    # the fleet
    hosts: int = 4
    models: tuple[str, ...] = DEFAULT_MODELS
    # the traffic
    popularity: str = "zipf:1.0"
    rate: float = 10.0
    duration: float = 60.0
    continue_share: float = 0.5
    max_turns: int = 8
    min_gap: float = 2.0
    user_words: int = 12
    bursts: tuple[tuple[float, float, float], ...] = ()
    shift_at: tuple[float, ...] = ()
    seed: int = 0
    # every host's knobs (``ollamamax mock`` flags of the same names)
    max_loaded_models: int = 1
    num_parallel: int = 2
    load_delay: float = 1.5
    tokens_per_sec: float = 100.0
    response_tokens: int = 20
    prompt_eval_tps: float = 0.0
    vram: int = 0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "models", _models_from(self.models))
        set_(self, "bursts", tuple((float(a), float(b), float(c)) for a, b, c in self.bursts))
        set_(self, "shift_at", tuple(sorted(float(t) for t in self.shift_at)))
        problems = []
        if self.hosts < 1:
            problems.append(f"hosts must be >= 1, got {self.hosts}")
        if not self.models:
            problems.append("models: at least one")
        if len(set(self.models)) != len(self.models):
            problems.append(f"models: duplicates in {self.models}")
        _popularity_exponent(self.popularity)
        for name in ("rate", "duration", "load_delay", "tokens_per_sec", "prompt_eval_tps", "min_gap"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0 or (v == 0 and name in ("rate", "duration")):
                problems.append(f"{name} must be {'> 0' if name in ('rate', 'duration') else '>= 0'}, got {v}")
        if not 0.0 <= self.continue_share <= 1.0:
            problems.append(f"continue_share must be in [0, 1], got {self.continue_share}")
        for name in ("max_turns", "user_words", "max_loaded_models", "num_parallel", "response_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vram < 0:
            problems.append(f"vram must be >= 0, got {self.vram}")
        for start, length, mult in self.bursts:
            if not (math.isfinite(start) and math.isfinite(length) and math.isfinite(mult)):
                problems.append(f"burst {(start, length, mult)}: not finite")
            elif start < 0 or length <= 0 or mult < 0:
                problems.append(f"burst {(start, length, mult)}: needs start >= 0, length > 0, multiplier >= 0")
        if any(not math.isfinite(t) or t < 0 for t in self.shift_at):
            problems.append(f"shift_at: times must be >= 0, got {self.shift_at}")
        if problems:
            raise ValueError("; ".join(problems))
        expected = self.requests_expected
        if expected > MAX_REQUESTS:
            raise ValueError(f"about {expected:.0f} requests: more than {MAX_REQUESTS} (lower rate or duration)")

    # --------------------------------------------------------------------- forms

    def spec(self, *, only_changed: bool = False) -> str:
        """The string form, which :func:`parse_scenario` reads back to an equal scenario
        (``models`` and lists join their items with ``+``, a burst's fields with ``:``)."""
        default = Scenario()
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if only_changed and v == getattr(default, f.name):
                continue
            parts.append(f"{f.name}={_format_value(f.name, v)}")
        return ",".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists)."""
        d = asdict(self)
        d["models"] = list(self.models)
        d["bursts"] = [list(b) for b in self.bursts]
        d["shift_at"] = list(self.shift_at)
        return d

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: Scenario | None = None) -> Scenario:
        """A scenario from the options of :func:`add_scenario_arguments`: ``--scenario``
        first, then each individual flag that was given overrides it."""
        scen = base or cls()
        text = getattr(args, "scenario", None)
        if text:
            scen = parse_scenario(text, scen)
        given = {}
        for f in fields(cls):
            v = getattr(args, f"scenario_{f.name}", None)
            if v is not None:
                given[f.name] = v
        return parse_scenario(",".join(f"{k}={v}" for k, v in given.items()), scen) if given else scen

    @property
    def requests_expected(self) -> float:
        """The expected number of requests (the integral of the arrival rate)."""
        return sum(r * (b - a) for a, b, r in _rate_pieces(self))


def _format_value(name: str, v: Any) -> str:
    if name == "models":
        return "+".join(v)
    if name == "bursts":
        return "+".join(":".join(_num(x) for x in b) for b in v)
    if name == "shift_at":
        return "+".join(_num(x) for x in v)
    if isinstance(v, float):
        return _num(v)
    return str(v)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


_FIELD_TYPES = {f.name: f.type for f in fields(Scenario)}
_ALIASES = {"continue": "continue_share", "turns": "max_turns", "shift": "shift_at", "shifts": "shift_at",
            "burst": "bursts", "n_hosts": "hosts"}


def _parse_value(name: str, text: str) -> Any:
    text = text.strip()
    kind = _FIELD_TYPES[name]
    if name == "models":
        return _models_from(text)
    if name == "bursts":
        out = []
        for part in (p for p in text.split("+") if p.strip()):
            bits = part.split(":")
            if len(bits) != 3:
                raise ValueError(f"bursts: START:LENGTH:MULTIPLIER[+...], got {part!r}")
            out.append(tuple(float(b) for b in bits))
        return tuple(out)
    if name == "shift_at":
        return tuple(float(p) for p in text.split("+") if p.strip())
    if name == "popularity":
        return text
    if kind in ("int", int):
        f = float(text)
        if not f.is_integer():
            raise ValueError(f"{name}: an integer, got {text!r}")
        return int(f)
    if kind in ("float", float):
        return float(text)
    return text  # pragma: no cover - every field is covered above


def parse_scenario(text: str | Mapping[str, Any], base: Scenario | None = None) -> Scenario:
    """``"hosts=4,rate=10,models=6"`` -> a :class:`Scenario` (unnamed fields from ``base``,
    default the issue's scenario). ``models`` is a count (the first N of
    :data:`MODEL_POOL`) or names joined by ``+``; ``bursts`` is ``START:LENGTH:MULT`` joined
    by ``+``; ``shift_at`` is times joined by ``+``; ``popularity`` is ``flat``, ``zipf`` or
    ``zipf:S``. A mapping of field names to values (strings or values) works too.
    Raises ``ValueError`` naming the bad field."""
    base = base or Scenario()
    items: Iterable[tuple[str, Any]]
    if isinstance(text, Mapping):
        items = text.items()
    else:
        pairs = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"scenario: expected key=value, got {part!r}")
            k, v = part.split("=", 1)
            pairs.append((k, v))
        items = pairs
    changes: dict[str, Any] = {}
    for key, value in items:
        name = key.strip().lower().replace("-", "_")
        name = _ALIASES.get(name, name)
        if name not in _FIELD_TYPES:
            raise ValueError(f"scenario: unknown field {key!r} (known: {', '.join(_FIELD_TYPES)})")
        if isinstance(value, str):
            try:
                value = _parse_value(name, value)
            except ValueError as exc:
                raise ValueError(f"scenario: {name}={value!r}: {exc}") from None
        changes[name] = value
    return replace(base, **changes)


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """``--scenario "hosts=4,rate=10,..."`` and one flag per field (``--hosts``, ``--rate``,
    ``--continue-share``...; string values in the :func:`parse_scenario` syntax). Read them
    back with :meth:`Scenario.from_args`."""
    g = parser.add_argument_group("scenario (defaults: the fleet-scheduler issue's scenario)")
    g.add_argument("--scenario", default=None, metavar="K=V,...",
                   help="scenario fields, e.g. 'hosts=4,rate=10,models=6,popularity=zipf:1.0'; "
                        "the flags below override it")
    default = Scenario()
    for f in fields(Scenario):
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f"scenario_{f.name}", default=None, metavar="V",
                       help=f"default {_format_value(f.name, getattr(default, f.name)) or '(none)'}")


# ------------------------------------------------------------------------ arrivals


def _rate_pieces(s: Scenario) -> list[tuple[float, float, float]]:
    """``[(start, end, rate)]`` covering ``[0, duration)``, rate constant in each piece."""
    cuts = {0.0, s.duration}
    for start, length, _ in s.bursts:
        for t in (start, start + length):
            if 0.0 < t < s.duration:
                cuts.add(t)
    edges = sorted(cuts)
    return [(a, b, rate_at(s, a)) for a, b in itertools.pairwise(edges)]


def rate_at(scenario: Scenario, t: float) -> float:
    """The arrival rate (requests/s) at time ``t``: ``rate`` times every burst covering ``t``."""
    r = scenario.rate
    for start, length, mult in scenario.bursts:
        if start <= t < start + length:
            r *= mult
    return r


def _arrivals(s: Scenario) -> list[float]:
    rng = random.Random(f"{s.seed}:arrivals")
    out: list[float] = []
    for a, b, r in _rate_pieces(s):
        if r <= 0:
            continue
        t = a + rng.expovariate(r)
        while t < b:  # bounded: the expected count is checked against MAX_REQUESTS
            out.append(t)
            if len(out) > 2 * MAX_REQUESTS:
                raise ValueError("trace too long")
            t += rng.expovariate(r)
    return out


# ---------------------------------------------------------------------- popularity


def _weights(s: Scenario) -> list[float]:
    e = _popularity_exponent(s.popularity)
    return [1.0 / (k ** e) for k in range(1, len(s.models) + 1)]


def model_shares(scenario: Scenario) -> dict[str, float]:
    """Each model's expected share of requests under the initial popularity order."""
    w = _weights(scenario)
    total = sum(w)
    return {m: x / total for m, x in zip(scenario.models, w)}


def popularity_order(scenario: Scenario) -> list[tuple[float, tuple[str, ...]]]:
    """``[(from_time, models most popular first)]``: the initial order at 0, then one
    entry per time in ``shift_at`` (a seeded permutation whose most popular model differs
    from the one before)."""
    rng = random.Random(f"{scenario.seed}:shifts")
    order = list(scenario.models)
    out = [(0.0, tuple(order))]
    for t in scenario.shift_at:
        new = order[:]
        rng.shuffle(new)
        if len(new) > 1 and new[0] == order[0]:
            j = rng.randrange(1, len(new))
            new[0], new[j] = new[j], new[0]
        order = new
        out.append((t, tuple(order)))
    return out


# ---------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: at ``at`` seconds from the start, turn ``turn`` (0 = first)
    of conversation ``conversation`` with ``model``, whose new user message is ``user``."""

    at: float
    model: str
    conversation: int
    turn: int
    user: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at, "model": self.model, "conversation": self.conversation, "turn": self.turn,
                "user": self.user}


class _Bag:
    """A set of ids with O(1) add, discard and uniform choice (a list plus positions)."""

    __slots__ = ("items", "pos")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.pos: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.pos[x] = len(self.items)
        self.items.append(x)

    def discard(self, x: int) -> None:
        i = self.pos.pop(x, None)
        if i is None:
            return
        last = self.items.pop()
        if last != x:
            self.items[i] = last
            self.pos[last] = i

    def pick(self, rng: random.Random, ok: Any) -> int:
        """A uniform choice among the items for which ``ok(item)``; -1 if none. Rejection
        sampling (few items fail ``ok``: only those of the last ``min_gap`` seconds), then,
        after 32 misses, one scan of the rest."""
        items = self.items
        if not items:
            return -1
        for _ in range(32):
            x = items[rng.randrange(len(items))]
            if ok(x):
                return x
        eligible = [x for x in items if ok(x)]
        return eligible[rng.randrange(len(eligible))] if eligible else -1


def make_trace(scenario: Scenario) -> list[TraceRequest]:
    """The scenario's requests, sorted by ``at`` (see the module docstring for the rules).
    The same scenario (seed included) always gives the same list."""
    s = scenario
    times = _arrivals(s)
    pick_rng = random.Random(f"{s.seed}:models")
    conv_rng = random.Random(f"{s.seed}:conversations")
    text_rng = random.Random(f"{s.seed}:text")
    orders = popularity_order(s)
    starts = [t for t, _ in orders]
    cum = []
    acc = 0.0
    for w in _weights(s):
        acc += w
        cum.append(acc)
    open_convs = {m: _Bag() for m in s.models}  # conversations with turns left, by model
    turns: list[int] = []  # next turn number per conversation id
    last_at: list[float] = []
    out: list[TraceRequest] = []
    for at in times:
        order = orders[bisect.bisect_right(starts, at) - 1][1]
        rank = bisect.bisect_left(cum, pick_rng.random() * acc)
        model = order[min(rank, len(order) - 1)]
        conv = -1
        if conv_rng.random() < s.continue_share:
            latest = at - s.min_gap  # a conversation whose last turn began by then may continue
            conv = open_convs[model].pick(conv_rng, lambda c, latest=latest: last_at[c] <= latest)
        if conv < 0:
            conv = len(turns)
            turns.append(0)
            last_at.append(at)
            if s.max_turns > 1:
                open_convs[model].add(conv)
        turn = turns[conv]
        turns[conv] = turn + 1
        last_at[conv] = at
        if turn > 0 and turn + 1 >= s.max_turns:
            open_convs[model].discard(conv)
        user = " ".join(_WORDS[text_rng.randrange(len(_WORDS))] for _ in range(s.user_words))
        out.append(TraceRequest(at=round(at, 6), model=model, conversation=conv, turn=turn, user=user))
    return out


def summary(trace: Sequence[TraceRequest]) -> dict[str, Any]:
    """Counts of a trace: requests, first and continued turns, conversations, the longest
    conversation, the time span, and per model (in order of requests) the same counts."""
    per: dict[str, dict[str, int]] = {}
    convs: dict[int, int] = {}
    for r in trace:
        row = per.setdefault(r.model, {"requests": 0, "first": 0, "continued": 0})
        row["requests"] += 1
        row["first" if r.turn == 0 else "continued"] += 1
        convs[r.conversation] = max(convs.get(r.conversation, 0), r.turn + 1)
    n = len(trace)
    first = sum(1 for r in trace if r.turn == 0)
    return {
        "requests": n,
        "first": first,
        "continued": n - first,
        "continued_share": (n - first) / n if n else 0.0,
        "conversations": len(convs),
        "max_turns_seen": max(convs.values(), default=0),
        "span_s": (trace[-1].at - trace[0].at) if n else 0.0,
        "per_model": dict(sorted(per.items(), key=lambda kv: -kv[1]["requests"])),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between order
    statistics (numpy's default); None when empty."""
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
