"""HTTP/1.1 for the upstream client, without I/O: response-head parsing, chunk cutting,
request-head building, and the client's error types.

* :func:`parse_head` parses a response head (status line, headers; the framing headers
  Content-Length, Transfer-Encoding and Connection are interpreted, Content-Type kept)
  and caches it by its bytes: a host repeats the same head within a second (the Date
  header's resolution).
* :func:`plain_run` cuts a run of plain ``<hex>\r\n<data>\r\n`` chunks in one step.
* :func:`head_prefix` / :func:`build_head` build a request head.
* :class:`UpstreamError` and its subclasses are what the client raises (all ``OSError``).

Pure functions over bytes; the protocol that uses them is ``connection.py``.
"""

from __future__ import annotations

import errno
import itertools
import operator
import re
from collections.abc import Mapping

__all__ = [
    "BURST_BYTES",
    "BadResponse",
    "CHUNK_SIZE_LINE",
    "ConnectFailed",
    "Disconnected",
    "HEAD_CACHE",
    "HEAD_CACHE_SIZE",
    "HeadInfo",
    "HostGone",
    "LOCAL_ERRNOS",
    "LocalResourceError",
    "MAX_HEAD",
    "MAX_LINE",
    "NO_BODY_STATUS",
    "StatusError",
    "UpstreamError",
    "build_head",
    "head_prefix",
    "parse_head",
    "plain_run",
]

MAX_HEAD = 64 * 1024  # longest accepted response head
MAX_LINE = 4096  # longest accepted chunk-size / trailer line


class UpstreamError(OSError):
    """A transport-level failure talking to a host."""


class ConnectFailed(UpstreamError):
    """The TCP connection could not be opened."""


class Disconnected(UpstreamError):
    """The connection ended before the response was complete."""


class BadResponse(UpstreamError):
    """The host sent something that is not a valid HTTP/1.1 response."""


class StatusError(UpstreamError):
    """A non-200 answer where only 200 is acceptable (``get_json``)."""

    def __init__(self, status: int, reason: str = "") -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status = status


class HostGone(UpstreamError):
    """The request was abandoned before its first byte because the host was taken out of
    rotation (ejected, or its probe failed): try another host; not the host's fault again."""


class LocalResourceError(UpstreamError):
    """The gateway itself ran out of a resource (descriptors, buffers, memory) while
    connecting: never the host's fault."""


# errno values that mean "this process (or machine) is out of something", not "the host
# refused": EMFILE, ENFILE, ENOBUFS, ENOMEM
LOCAL_ERRNOS = frozenset(
    getattr(errno, n) for n in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM") if hasattr(errno, n)
)


# a chunk-size line without extension or padding (anything else takes the general path)
CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]+)\r\n")
_HEX_DIGITS = b"0123456789abcdefABCDEF"
NO_RUN: tuple[list[bytes], int] = ([], 0)
# A chunked buffer at least this long, whose first chunk would fit 8 times into it, is
# first tried as a burst (splitting costs about as much as cutting 8 chunks one by one).
BURST_BYTES = 256


def plain_run(buf: bytes) -> tuple[list[bytes], int]:
    """The leading run of complete plain chunks (``<hex>\\r\\n<data>\\r\\n``, size > 0) of
    ``buf``, which starts at a chunk boundary: (their data, bytes they take), found with
    C-level loops.  Anything unusual (an extension, padding, a CRLF inside the data that
    breaks the alternation) gives no run; the caller then parses chunk by chunk."""
    parts = buf.split(b"\r\n")
    datas = parts[1:-1:2]  # each followed by CRLF
    k = len(datas)
    if k < 2:
        return NO_RUN
    sizes = parts[0 : 2 * k : 2]
    if not all(sizes) or b"".join(sizes).translate(None, _HEX_DIGITS):
        return NO_RUN
    ints = list(map(int, sizes, itertools.repeat(16, k)))
    lens = list(map(len, datas))
    if ints != lens or 0 in ints:
        j = ints.index(0) if 0 in ints else k
        same = list(map(operator.eq, ints[:j], lens[:j]))
        if False in same:
            j = same.index(False)
        if not j:
            return NO_RUN
        datas, sizes, lens = datas[:j], sizes[:j], lens[:j]
    return datas, sum(map(len, sizes)) + sum(lens) + 4 * len(datas)

NO_BODY_STATUS = frozenset({204, 304})


# A head parsed once is parsed for good: a host sends the same head bytes for every
# answer of one kind within the same second (the Date header), so a small cache keyed
# by the head's bytes skips most parsing (see parse_head).  Cleared when full.
HEAD_CACHE_SIZE = 256
HeadInfo = tuple[int, str, tuple[tuple[str, str], ...], str, int, bool, bool]
HEAD_CACHE: dict[bytes, HeadInfo] = {}


def _parse_head_bytes(head: bytes) -> HeadInfo | None:
    """(status, reason, header pairs, content type, content length or -1, chunked,
    close) of one response head, or None for an interim 1xx answer."""
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0]
    if not status_line.startswith("HTTP/1.") or status_line[8:9] != " ":
        raise BadResponse(f"invalid status line {status_line[:80]!r}")
    code = status_line[9:12]
    if len(code) != 3 or not (code.isascii() and code.isdigit()) or status_line[12:13] not in ("", " "):
        raise BadResponse(f"invalid status line {status_line[:80]!r}")
    status = int(code)
    if status < 100:
        raise BadResponse(f"invalid status {status}")
    if status < 200:
        return None
    pairs = []
    length = -1
    chunked = False
    ctype = None
    close = status_line[5:8] == "1.0"
    del lines[0]
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name[-1] in " \t":
            raise BadResponse(f"invalid header line {line[:80]!r}")
        value = value.strip()
        pairs.append((name, value))
        # only the framing headers (and Content-Type) matter here; compare cheaply
        # before lowercasing
        if name[0] in "CcTt":
            lk = name.lower()
            if lk == "content-type":
                if ctype is None:
                    ctype = value  # the first one, as CIMultiDict.get gives
            elif lk == "content-length":
                if not (value.isascii() and value.isdigit()):
                    raise BadResponse(f"invalid Content-Length {value[:40]!r}")
                n = int(value)
                if length >= 0 and n != length:
                    raise BadResponse("conflicting Content-Length headers")
                length = n
            elif lk == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
            elif lk == "connection":
                tokens = value.lower()
                if "close" in tokens:
                    close = True
                elif "keep-alive" in tokens:
                    close = False
    return status, status_line[13:], tuple(pairs), ctype if ctype is not None else "", length, chunked, close




def parse_head(head: bytes) -> HeadInfo | None:
    """``_parse_head_bytes`` through the cache of recently seen heads."""
    parsed = HEAD_CACHE.get(head)
    if parsed is None:
        parsed = _parse_head_bytes(head)
        if parsed is None:
            return None
        if len(HEAD_CACHE) >= HEAD_CACHE_SIZE:
            HEAD_CACHE.clear()
        HEAD_CACHE[head] = parsed
    return parsed


def build_head(
    method: str,
    target: str,
    host_line: bytes,
    fixed: bytes,
    forwarded: Mapping[str, str] | None,
    body_len: int,
) -> bytes:
    """Request line + Host + fixed headers + forwarded headers + Content-Length + CRLF."""
    prefix = head_prefix(method, target, host_line, fixed, forwarded)
    if body_len or method not in ("GET", "HEAD"):
        return prefix + b"Content-Length: %d\r\n\r\n" % body_len
    return prefix + b"\r\n"


def head_prefix(
    method: str,
    target: str,
    host_line: bytes,
    fixed: bytes,
    forwarded: Mapping[str, str] | None,
) -> bytes:
    """Request line + Host + fixed headers + forwarded headers (no Content-Length, no
    final CRLF): the part of a head that a client sends the same way every time."""
    parts = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), host_line, fixed]
    if forwarded:
        # aiohttp's server decodes header bytes as UTF-8 with surrogateescape: this
        # restores the client's exact bytes
        for k, v in forwarded.items():
            parts.append(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape"))
    return b"".join(parts)
