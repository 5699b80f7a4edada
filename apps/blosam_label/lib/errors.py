"""How the app refuses a request: HTTP 400 with a message that says what was wrong and with which input."""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["BadInput"]


class BadInput(HTTPException):
    """A request the app cannot serve because of its input (an unreadable image, a label of the wrong shape).

    MONAI Label's endpoints call the app directly, so FastAPI answers this with status 400 and ``{"detail": message}``
    (MONAI Label's client raises it with the message); the server keeps running and nothing is written.
    """

    def __init__(self, message: str) -> None:
        super().__init__(status_code=400, detail=message)
        self.message = message

    def __str__(self) -> str:
        return self.message
