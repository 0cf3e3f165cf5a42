"""Which request heads the fast path serves itself, parsed with llhttp: :func:`parse_request_head`.

The head is parsed by llhttp (Node's HTTP parser, through ``httptools``, as uvicorn does):
framing, token and value characters, ``Content-Length`` syntax and overflow, duplicate
``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, obsolete line folding and
bare line feeds are its decisions, not a hand-written grammar's.

What it accepts, the fast path serves -- ``GET``/``POST``/``DELETE`` over HTTP/1.1, a plain
absolute path with an optional query, ASCII header lines no longer than aiohttp's limit, no
repeated header name, a ``Content-Length`` body (or none) within the size limit -- and every
other connection goes to aiohttp, whose rules then decide (400/413/431, ``%``-escapes and dot
segments, chunked bodies, ``Expect``, ``Upgrade``, repeated headers, HTTP/1.0, the
observability routes).  A few heads are wrong whoever answers them; for those the result is
a :class:`BadHead` that both front ends answer the same way (:func:`head_problem`):

* HTTP/1.1 without ``Host``: 400 (RFC 9112 section 3.2);
* an HTTP version other than 1.0 and 1.1: 505 (``HTTP/2.0`` in a request line is not
  HTTP/2: it is an HTTP/1 framing error, and answering it ``HTTP/2.0 200`` would be wrong);
* a request line longer than :data:`MAX_LINE`: 414.

Repeated names are found case-insensitively on the parsed names themselves, whatever the
installed ``multidict`` does with case (before 6.3 its ``keys() & keys()`` is
case-sensitive, which once let ``Content-Length`` + ``content-length`` through).

This module does no I/O and never answers a request itself.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import httptools
from multidict import CIMultiDict

__all__ = ["BadHead", "MAX_LINE", "PROBE_LIMIT", "RequestHead", "head_problem", "parse_request_head", "hopeless"]

_FAST_METHODS = frozenset({b"GET", b"POST", b"DELETE"})
# framing headers, and Origin: a browser's request, whose CORS answer is the app's
_HANDOVER = frozenset({"transfer-encoding", "expect", "upgrade", "origin"})
# A target served as is: absolute path of plain characters, optional query; no "%" (needs
# decoding), no "//" or "/." (needs normalising), no fragment.
_PLAIN_TARGET = re.compile(
    rb"/(?:[A-Za-z0-9\-_~!$&'()*+,;=:@]+(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@]+)*/?)?(?:\?[\x21-\x7e]*)?")
_OBSERVABILITY = (b"/metrics", b"/ollamamax")
MAX_LINE = 8190  # aiohttp's max_line_size and max_field_size: longer lines are its to refuse
PROBE_LIMIT = 2048  # how much of an unfinished head is checked for framing errors


class RequestHead(NamedTuple):
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    length: int  # Content-Length (0 without one)
    close: bool  # the client asked for Connection: close


class BadHead(NamedTuple):
    """A head both front ends refuse with ``status`` (the connection is closed after)."""

    status: int
    message: str
    path: str


class _Target:
    """The llhttp callback: the request target, as bytes (header lines are split from the
    text once llhttp has accepted it)."""

    __slots__ = ("url",)

    def __init__(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url


def head_problem(version: str, host: str | None) -> tuple[int, str] | None:
    """What is wrong with a request whoever parses it: an HTTP version other than 1.x (505),
    or HTTP/1.1 with no ``Host`` (400); None when nothing is."""
    if version not in ("1.1", "1.0"):
        return 505, f"HTTP version {version} is not supported: this server speaks HTTP/1.1"
    if host is None and version == "1.1":
        return 400, "an HTTP/1.1 request must carry a Host header"
    return None


def hopeless(partial: bytes) -> bool:
    """Whether an unfinished head can already never become a request (TLS bytes, bare line
    feeds, a bad method): then it goes to aiohttp at once, which answers 400, rather than
    waiting for a blank line that never comes.  The caller passes at most the first
    ``PROBE_LIMIT`` bytes (the check reparses from the start each time more arrives)."""
    try:
        httptools.HttpRequestParser(_Target()).feed_data(partial)
    except httptools.HttpParserUpgrade:
        return False
    except httptools.HttpParserError:
        return True
    return False


def parse_request_head(raw: bytes, max_body_size: int) -> RequestHead | BadHead | None:
    """The head (without its final blank line) of a request the fast path serves, a
    :class:`BadHead` to refuse, or None when the connection must go to aiohttp."""
    line_end = raw.find(b"\r\n")
    if line_end > MAX_LINE or (line_end < 0 and len(raw) > MAX_LINE):
        parts = raw[:256].split(b" ", 2)
        return BadHead(414, f"request line longer than {MAX_LINE} bytes",
                       _path_of(parts[1] if len(parts) > 1 else b"/"))
    if not raw.isascii():
        return None  # non-ASCII in a name, a value or the target: aiohttp's rules apply
    c = _Target()
    p = httptools.HttpRequestParser(c)
    try:
        p.feed_data(raw + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        return None  # Upgrade, CONNECT
    except httptools.HttpParserError:
        return None  # malformed: aiohttp answers 400
    # llhttp accepted it, so every header line is "name:value" ending in CRLF (no folding, no
    # bare LF, no blank before the colon): splitting the text is exact, and cheaper than a
    # Python callback per header
    text = raw.decode("ascii")
    lines = text.split("\r\n")
    del lines[0]
    names: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for line in lines:
        name, _, value = line.partition(":")
        names.add(name.lower())
        pairs.append((name, value.lstrip(" \t")))  # llhttp's value: without leading blanks
    if len(names) != len(pairs) or not _HANDOVER.isdisjoint(names):
        # a repeated name (aiohttp refuses repeated Host, Content-Type, ... as smuggling
        # attempts, and merges others) or a framing header: aiohttp decides
        return None
    if len(raw) > MAX_LINE and any(len(n) + len(v) + 2 > MAX_LINE for n, v in pairs):
        return None  # aiohttp refuses it first (400/431), whatever else is wrong
    target = c.url
    version = p.get_http_version()
    if version != "1.1":
        problem = head_problem(version, "")
        if problem is None or not _PLAIN_TARGET.fullmatch(target):
            return None  # HTTP/1.0, or a target aiohttp refuses first: aiohttp's
        return BadHead(problem[0], problem[1], _path_of(target))
    method = p.get_method()
    if method not in _FAST_METHODS or not _PLAIN_TARGET.fullmatch(target) or target.startswith(_OBSERVABILITY):
        return None  # %-escapes, dot segments, "//", fragments, other methods: aiohttp normalises
    path, _, query = target.decode("ascii").partition("?")
    if "host" not in names:
        return BadHead(400, "an HTTP/1.1 request must carry a Host header", path)
    if " \r\n" in text or "\t\r\n" in text or text.endswith((" ", "\t")):
        return None  # trailing blanks: kept or stripped depending on the aiohttp release
    headers = CIMultiDict(pairs)
    length = 0
    if "content-length" in names:
        length = int(headers["Content-Length"])  # llhttp checked: digits, no overflow
        if length > max_body_size:
            return None  # aiohttp answers 413 (and closes)
    close = not p.should_keep_alive()
    if "connection" in names and "upgrade" in headers["Connection"].lower():
        return None
    return RequestHead(method.decode("ascii"), path, query, headers, length, close)


def _path_of(target: bytes) -> str:
    return target.decode("latin-1").partition("?")[0] or "/"
