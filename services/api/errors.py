"""HTTP errors of the job API, in the seed's envelope: `{"error": "..."}`.

    ApiError(status, message)
      ├── BadRequest     400  the request is malformed; nothing was written
      ├── Unauthorized   401  no or unknown bearer token
      ├── Forbidden      403  the job or file belongs to another user
      ├── NotFound       404
      ├── Conflict       409  the job's state or an idempotency key forbids it
      ├── Gone           410  the job was deleted
      ├── TooLarge       413  an upload over the size limit
      ├── Unprocessable  422  a worker service refused a task's arguments
      ├── TooManyRequests 429 a worker service's queue is full; retry later
      ├── BadGateway     502  every attempt of a task on the service's instances failed
      ├── Unavailable    503  Kafka did not acknowledge, or no healthy instance; retry later
      └── GatewayTimeout 504  a task's answer did not come in time; poll its task id
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ApiError(Exception):
    status = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def response(self) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        if self.status in (429, 503):
            headers["Retry-After"] = "1"
        return json_response({"error": self.message, **self.extra}, self.status, headers)


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class Gone(ApiError):
    status = 410


class TooLarge(ApiError):
    status = 413


class Unprocessable(ApiError):
    status = 422


class TooManyRequests(ApiError):
    status = 429


class BadGateway(ApiError):
    status = 502


class Unavailable(ApiError):
    status = 503


class GatewayTimeout(ApiError):
    status = 504


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")
