"""The prompt cache of a loaded model: one token cache per parallel slot, as llama.cpp keeps.

Owns: the token sequence of a prompt (chat messages, or a generate prompt, through the
template the emulated models show in ``/api/show``), the tokens a reply adds to its slot,
:class:`Slot` (the tokens one parallel slot last processed, and whether a request holds
it) and the choice of a slot for a prompt with the number of its tokens already cached.
Pure and synchronous: it must not sleep, read a clock, decide when slots are created or
dropped (the scheduler makes them when a model loads and drops them when it unloads) or
know about HTTP.

What it follows (Ollama's runners, ``runner/ollamarunner/cache.go`` and
``runner/llamarunner/cache.go``, ``InputCache.LoadCacheSlot``):

* Each parallel slot keeps the inputs it last processed: the prompt and then every
  generated token fed back through the model (the runner appends them to
  ``seq.cache.Inputs`` as it processes each batch).
* A request takes the free slot whose inputs share the longest common prefix with its
  prompt (``findLongestCacheSlot``: strictly longer wins, so the first slot wins a tie;
  ``OLLAMA_MULTIUSER_CACHE``'s ``findBestCacheSlot`` is not emulated). The slot is cut
  back to that prefix and only the rest of the prompt is evaluated. When the whole prompt
  is cached, one token is still evaluated ("leave one input to sample").
* Tokens here are words and role markers, not a real tokenizer's ids: a chat renders as
  ``<s>``, then ``<|role|>`` and the content's words for each message, then
  ``<|assistant|>``. Deterministic from (role, content), so a continued conversation whose
  history repeats the previous reply verbatim extends the slot's tokens exactly. Thinking
  text and tool calls are tokens of the reply but not of the history a client sends back
  (the role + content template drops them), so after such a reply the prefix ends at the
  reply, as it does with Ollama's templates that drop thinking from history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._generation import Plan

__all__ = ["BOS", "Slot", "chat_tokens", "common_prefix", "generate_tokens", "new_slots", "reply_tokens", "take_slot"]

BOS = "<s>"


def chat_tokens(turns: Iterable[tuple[str, str]]) -> list[str]:
    """The tokens of a chat prompt: ``<s>``, then ``<|role|>`` + words per message, then ``<|assistant|>``."""
    out = [BOS]
    for role, content in turns:
        out.append(f"<|{role}|>")
        out.extend(content.split())
    out.append("<|assistant|>")
    return out


def generate_tokens(prompt: str, system: str = "", *, raw: bool = False, context: Sequence[int] = ()) -> list[str]:
    """The tokens of ``/api/generate`` (and ``/v1/completions``): the template of ``/api/show``
    (``<|system|>``, ``<|user|>``, ``<|assistant|>``) around the words, or the bare words for
    ``raw``; a ``context`` from an earlier reply comes first, as Ollama prepends it."""
    out = [BOS]
    out.extend(f"#{t}" for t in context)
    if raw:
        out.extend(prompt.split())
        return out
    if system:
        out.append("<|system|>")
        out.extend(system.split())
    out.append("<|user|>")
    out.extend(prompt.split())
    out.append("<|assistant|>")
    return out


def reply_tokens(plan: Plan) -> list[str]:
    """The tokens a reply feeds back into its slot: thinking words, answer words, one per tool call."""
    out = "".join(plan.thinking).split() if plan.thinking else []
    out.extend("".join(plan.content).split())
    out.extend("<|tool_call|>" for _ in plan.tool_calls)
    return out


class Slot:
    """One parallel slot of a loaded model: the tokens it last processed; whether a request holds it."""

    __slots__ = ("in_use", "tokens")

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.in_use = False

    def __repr__(self) -> str:
        return f"Slot({len(self.tokens)} tokens{', in use' if self.in_use else ''})"


def new_slots(n: int) -> list[Slot]:
    """The empty slots of a model that has just loaded."""
    return [Slot() for _ in range(n)]


def common_prefix(a: Sequence[str], b: Sequence[str]) -> int:
    """How many leading tokens ``a`` and ``b`` share (slice comparisons: the work is in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo]; a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def take_slot(slots: Sequence[Slot], prompt: Sequence[str]) -> tuple[Slot, int] | None:
    """Take the free slot with the longest cached prefix of ``prompt``; returns (slot, cached
    tokens), or None when every slot is held. The slot keeps only that prefix from now on
    (the rest of its old tokens are overwritten by this request's)."""
    best: Slot | None = None
    longest = -1
    for s in slots:
        if s.in_use:
            continue
        n = common_prefix(s.tokens, prompt)
        if n > longest:
            best, longest = s, n
    if best is None:
        return None
    if longest == len(prompt) and longest > 0:
        longest -= 1  # the last prompt token is evaluated again to sample the first answer token
    best.in_use = True
    best.tokens = best.tokens[:longest]
    return best, longest
