"""The manager service's one error type: an HTTP status, a message saying what to do next, and
extra fields for the JSON body. Apart from service.py so the modules the Manager is made of
(moves.py, ...) raise it without importing the Manager."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra
