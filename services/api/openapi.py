"""The OpenAPI 3.1 document of every endpoint, served at /openapi.json."""

from __future__ import annotations

from typing import Any

UUID = {"type": "string", "format": "uuid"}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _ok(code: int, schema: dict[str, Any]) -> dict[str, Any]:
    return {str(code): {"description": "success", "content": {"application/json": {"schema": schema}}}}


JOB_ID_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "properties": {"job_id": UUID}, "required": ["job_id"], "additionalProperties": False,
    }}},
}
JOB_ID_RESULT = {"type": "object", "properties": {"job_id": UUID}, "required": ["job_id"]}
STATE = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelling", "cancelled", "expired"]}
NULLABLE_UUID = {"type": ["string", "null"], "format": "uuid"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
JOB_INFO = {
    "type": "object",
    "required": ["job_id", "state", "answer_id"],
    "properties": {
        "job_id": UUID, "state": STATE, "answer_id": NULLABLE_UUID, "stderr_id": NULLABLE_UUID,
        "exit_code": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
        "command": {"type": "string"}, "user_id": {"type": "string"}, "binary": NULLABLE_UUID,
        "input_files": {"type": "array", "items": UUID}, "ttl": {"type": ["integer", "null"]},
        "attempt": {"type": "integer"}, "submitted_at": {"type": "string", "format": "date-time"},
        "started_at": NULLABLE_TIME, "finished_at": NULLABLE_TIME, "expires_at": NULLABLE_TIME,
    },
}
LIST_PARAMS = [
    {"name": "state", "in": "query", "schema": {"type": "string"}, "description": "comma-separated states"},
    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "user_id", "in": "query", "schema": {"type": "string"}, "description": "admins only"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "next_cursor of the previous page"},
]
LIST_RESULT = {
    "type": "object",
    "properties": {"job_ids": {"type": "array", "items": UUID}, "next_cursor": {"type": ["string", "null"]}},
    "required": ["job_ids"],
}
LIST_OP = {"summary": "List jobs, newest first", "parameters": LIST_PARAMS,
           "responses": {**_ok(200, LIST_RESULT), **_errors(400, 401, 403)}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "skyjobs", "version": "0.1.0",
             "description": "Event-sourced job orchestration. Every request needs `Authorization: Bearer <token>`."},
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/api/job/run": {"post": {
            "summary": "Run a command as a job",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["command"],
                "properties": {
                    "command": {"type": "string", "minLength": 1, "description": "run by /bin/sh -c"},
                    "binary": UUID,
                    "input_files": {"type": "array", "items": UUID},
                    "ttl": {"type": "integer", "minimum": 1, "maximum": 31536000},
                },
            }}}},
            "responses": {**_ok(201, JOB_ID_RESULT), **_errors(400, 401, 409, 503)},
        }},
        "/api/job/job_info/{job_id}": {"get": {
            "summary": "State of a job",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": UUID}],
            "responses": {**_ok(200, JOB_INFO), **_errors(400, 401, 403, 404, 410)},
        }},
        "/api/job/list_jobs": {"get": LIST_OP},
        "/api/list_jobs": {"get": LIST_OP},
        "/api/job/cancel": {"post": {
            "summary": "Cancel a job", "requestBody": JOB_ID_BODY,
            "responses": {**_ok(200, JOB_ID_RESULT), **_errors(400, 401, 403, 404, 409, 410, 503)},
        }},
        "/api/job/delete": {"delete": {
            "summary": "Delete a job (cancels it first if it runs) and purge its output",
            "requestBody": JOB_ID_BODY,
            "responses": {**_ok(200, JOB_ID_RESULT), **_errors(400, 401, 403, 404, 410, 503)},
        }},
        "/api/files": {"post": {
            "summary": "Upload a file: a raw body (name from ?name=) or multipart with a part named file",
            "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "file": {"type": "string", "format": "binary"}}}},
            }},
            "responses": {**_ok(201, {"type": "object", "properties": {
                "file_id": UUID, "name": {"type": "string"}, "size": {"type": "integer"},
                "sha256": {"type": "string"}}, "required": ["file_id"]}), **_errors(400, 401, 413, 503)},
        }},
        "/api/files/{file_id}": {"get": {
            "summary": "The bytes of a stored file",
            "parameters": [{"name": "file_id", "in": "path", "required": True, "schema": UUID}],
            "responses": {"200": {"description": "the file",
                                  "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                          **_errors(400, 401, 403, 404, 410)},
        }},
    },
}
