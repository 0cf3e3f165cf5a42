"""How a request to the emulated host fails: :class:`HttpError` and the fault texts.

Owns: the exception every layer raises to end a request before its first byte (status +
message; the server turns it into Ollama's or OpenAI's error body) and the exact texts of
the injected faults and of the runner's refusal of images. It must stay a leaf: no imports from other emulator modules, no
decisions about when a request fails.
"""

from __future__ import annotations

__all__ = ["FAIL_MSG", "MIDSTREAM_MSG", "NO_VISION_MSG", "HttpError"]

# fail_rate: a 500 before the first byte
FAIL_MSG = "llama-server process has terminated: exit status 2"
# midstream_fail_rate: the in-band error that replaces the rest of a reply
MIDSTREAM_MSG = "an error was encountered while running the model: unexpected EOF"
# images sent to a model without a vision projector (Ollama's model/model.go ErrNoVisionModel)
NO_VISION_MSG = "this model is missing data required for image input"


class HttpError(Exception):
    """An error answered before the first byte: status + message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
