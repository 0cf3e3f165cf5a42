"""Exceptions shared by the native and pure-Python implementations."""

from __future__ import annotations

__all__ = ["QueueEmpty", "QueueFull"]


class QueueEmpty(Exception):
    """Raised by ``get_nowait()`` on an empty queue."""


class QueueFull(Exception):
    """Raised by ``put_nowait()`` on a full queue."""
