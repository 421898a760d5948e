"""Errors that carry the status they should produce (h11's ``error_status_hint`` idea)."""

from __future__ import annotations


class ApiError(Exception):
    """An admin-API outcome other than success: ``{"error":{"code","message"}}`` + status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}
