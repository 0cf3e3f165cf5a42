"""Which request heads the fast path serves itself, parsed: :func:`parse_request_head`.

The fast path (``fastpath.py``) serves the common request shape -- ``GET``/``POST``/``DELETE``
over HTTP/1.1, a plain absolute path with an optional query, ``name: value`` header lines
of printable ASCII, a ``Content-Length`` body (or none) within the size limit -- and hands
every other connection to aiohttp, whose rules then decide (431/400/413, normalising
``%``-escapes and dot segments, chunked bodies, ``Expect``, ``Upgrade``, repeated headers,
HTTP/1.0, the observability routes).  This module is that decision and the parse; it does
no I/O and never answers a request itself.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from multidict import CIMultiDict

__all__ = ["RequestHead", "parse_request_head"]

_FAST_METHODS = frozenset({"GET", "POST", "DELETE"})
# Request headers whose presence means "let aiohttp handle this connection" (the check is
# against a CIMultiDict's keys, which keep the client's spelling: list the common ones).
_HANDOVER_HEADERS = CIMultiDict(
    (k, "") for k in ("Transfer-Encoding", "Expect", "Upgrade")).keys()
# A target served as is: absolute path of plain characters, optional query; no "%" (needs
# decoding), no "//" or "/." (needs normalising), no fragment, no spaces or controls.
_PLAIN_TARGET = re.compile(
    r"/(?:[A-Za-z0-9\-_~!$&'()*+,;=:@]+(?:/[A-Za-z0-9\-_~!$&'()*+,;=:@]+)*/?)?(?:\?[\x21-\x7e]*)?")
# One header line: CRLF, a token, a colon, optional blanks, the value (to the line's end:
# trailing blanks are stripped afterwards, only in the rare head that has any).
_HEADER = re.compile(r"\r\n([!#$&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*)")
_OBSERVABILITY = ("/metrics", "/ollamamax")
# Anything but tab and printable ASCII (searched after removing the CRLF line ends).
_NOT_TEXT = re.compile(r"[^\t\x20-\x7e]")


class RequestHead(NamedTuple):
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    length: int  # Content-Length (0 without one)
    close: bool  # the client asked for Connection: close


def parse_request_head(raw: bytes, max_body_size: int) -> RequestHead | None:
    """The head (without its final blank line) of a request the fast path serves, or None
    when the connection must go to aiohttp."""
    head = raw.decode("latin-1")
    if _NOT_TEXT.search(head.replace("\r\n", "")):
        return None  # control bytes, a bare CR or LF, non-ASCII: aiohttp's rules apply
    line_end = head.find("\r\n")
    if line_end < 0:
        line_end = len(head)
    parts = head[:line_end].split(" ")
    if len(parts) != 3 or parts[2] != "HTTP/1.1" or parts[0] not in _FAST_METHODS:
        return None
    target = parts[1]
    if not _PLAIN_TARGET.fullmatch(target):
        return None  # %-escapes, dot segments, "//", fragments: aiohttp normalises
    path, _, query = target.partition("?")
    if path.startswith(_OBSERVABILITY):
        return None
    pairs = _HEADER.findall(head, line_end)
    if len(pairs) != head.count("\r\n"):
        return None  # a line that is not "name: value" (or an obsolete fold)
    if " \r\n" in head or "\t\r\n" in head or head.endswith((" ", "\t")):
        pairs = [(k, v.rstrip(" \t")) for k, v in pairs]
    headers = CIMultiDict(pairs)
    if not _HANDOVER_HEADERS.isdisjoint(headers) or len(headers.keys() & headers.keys()) != len(pairs):
        # framing headers, or a repeated name (aiohttp refuses repeated Host, Content-Type,
        # User-Agent, ... as smuggling attempts, and merges others): aiohttp decides
        return None
    length = 0
    cl = headers.get("Content-Length")
    if cl is not None:
        if not cl.isdigit():
            return None
        length = int(cl)
        if length > max_body_size:
            return None  # aiohttp answers 413 (and closes)
    close = False
    conn = headers.get("Connection")
    if conn is not None:
        tokens = {t.strip().lower() for t in conn.split(",")}
        if "upgrade" in tokens:
            return None
        close = "close" in tokens
    return RequestHead(parts[0], path, query, headers, length, close)
