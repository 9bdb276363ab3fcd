"""The router's error: a gRPC status for the client, with a retry hint when waiting helps."""

from __future__ import annotations

import grpc


class RouterError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s
