"""The OpenAPI 3.1 document of every endpoint, served at /openapi.json."""

from __future__ import annotations

from typing import Any

UUID = {"type": "string", "format": "uuid"}
WAIT = {"name": "wait", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 60}}
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
        "retention": {"type": ["integer", "null"], "description": "seconds the job is kept once finished (null: "
                      "until deleted)"},
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
                    "retention": {"type": "integer", "minimum": 1, "maximum": 315360000,
                                  "description": "seconds the job is kept once finished; then it is deleted"},
                },
            }}}},
            "responses": {**_ok(201, JOB_ID_RESULT), **_errors(400, 401, 409, 503)},
        }},
        "/api/job/job_info/{job_id}": {"get": {
            "summary": "State of a job",
            "description": "With `wait`, the answer comes once the job has finished (or was deleted), "
                           "or when `wait` seconds have passed, with the job as it is then.",
            "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": UUID}, WAIT],
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


# --- worker services and the task proxy (seed 004; services/api/proxy.py) ----------------------------

SERVICE_ID = {"type": "integer", "minimum": 0}
ARGUMENT = {
    "type": "object",
    "required": ["argument_name", "argument_description", "type"],
    "properties": {
        "argument_name": {"type": "string"}, "argument_description": {"type": "string"},
        "type": {"type": "string", "enum": ["int", "float", "str", "bool", "json", "image", "file"]},
    },
}
INSTANCE = {
    "type": "object",
    "required": ["instance_id", "url", "state"],
    "properties": {
        "instance_id": UUID, "url": {"type": "string"}, "service_id": {"type": ["integer", "null"]},
        "service_name": {"type": ["string", "null"]}, "state": {"type": "string", "enum": ["up", "down", "pending"]},
        "reason": {"type": ["string", "null"]}, "task_path": {"type": ["string", "null"]},
        "max_concurrency": {"type": ["integer", "null"]},
        "registered_at": NULLABLE_TIME, "changed_at": NULLABLE_TIME,
    },
}
TASK_STATE = {"type": "string", "enum": ["pending", "answered", "failed"]}
TASK_ANSWERED = {
    "type": "object",
    "required": ["task_id", "service_id", "state", "instance_id", "attempts", "answer"],
    "properties": {"task_id": UUID, "service_id": SERVICE_ID, "state": TASK_STATE, "instance_id": UUID,
                   "attempts": {"type": "integer"}, "answer": {"description": "the instance's JSON answer"}},
}
TASK_INFO = {
    "type": "object",
    "required": ["task_id", "service_id", "state", "attempts"],
    "properties": {
        "task_id": UUID, "service_id": SERVICE_ID, "state": TASK_STATE, "attempts": {"type": "integer"},
        "instance_id": NULLABLE_UUID, "answer": {"description": "the instance's JSON answer, null until answered"},
        "answer_file_id": NULLABLE_UUID, "error": {"type": ["string", "null"]},
        "failure": {"type": ["string", "null"], "enum": ["rejected", "exhausted", "no_instance", "expired", None]},
        "submitted_at": {"type": "string", "format": "date-time"}, "finished_at": NULLABLE_TIME,
    },
}
TASK_FAILED = {
    "type": "object", "required": ["error", "task_id"],
    "properties": {"error": {"type": "string"}, "task_id": UUID, "state": {"type": "string"},
                   "failure": {"type": "string"}, "attempts": {"type": "integer"}},
}


def _task_errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "the task failed or its answer did not come in time; its task_id is given",
                     "content": {"application/json": {"schema": TASK_FAILED}}} for c in codes}


PROXY_PATHS: dict[str, Any] = {
    "/services_list": {"get": {
        "summary": "Every worker service with a registered instance",
        "responses": {**_ok(200, {"type": "array", "items": {
            "type": "object", "required": ["service_id", "service_name"],
            "properties": {"service_id": SERVICE_ID, "service_name": {"type": "string"}}}}), **_errors(401)},
    }},
    "/service_info/{service_id}": {"get": {
        "summary": "A service's description and arguments",
        "parameters": [{"name": "service_id", "in": "path", "required": True, "schema": SERVICE_ID}],
        "responses": {**_ok(200, {
            "type": "object", "required": ["service_id", "service_name", "service_description", "arguments"],
            "properties": {"service_id": SERVICE_ID, "service_name": {"type": "string"},
                           "service_description": {"type": "string"}, "arguments": {"type": "array", "items": ARGUMENT}},
        }), **_errors(400, 401, 404)},
    }},
    "/add_task": {"post": {
        "summary": "Run a task on one instance of a service and wait for its answer",
        "parameters": [
            {"name": "wait", "in": "query", "schema": {"type": "boolean", "default": True},
             "description": "false: answer 202 with the task id at once"},
            {"name": "timeout", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
             "description": "seconds to wait for the answer before 504 (default 30)"},
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "required": ["service_id", "args"],
            "properties": {"service_id": SERVICE_ID, "args": {"type": "array", "description":
                           "one value per declared argument; an image or file is a file id or base64 data"}},
        }}}},
        "responses": {
            **_ok(200, TASK_ANSWERED),
            **_ok(202, {"type": "object", "required": ["task_id", "state"],
                        "properties": {"task_id": UUID, "state": TASK_STATE}}),
            **_errors(400, 401, 404, 413, 429), **_task_errors(422, 502, 504),
            "503": {"description": "no healthy instance, or Kafka did not accept the task",
                    "content": {"application/json": {"schema": ERROR}}},
        },
    }},
    "/task_info/{task_id}": {"get": {
        "summary": "A task's state and, once answered, its answer",
        "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": UUID}],
        "responses": {**_ok(200, TASK_INFO), **_errors(400, 401, 403, 404)},
    }},
    "/services": {
        "get": {
            "summary": "The registered instances (admins)",
            "responses": {**_ok(200, {"type": "object", "required": ["instances"],
                                      "properties": {"instances": {"type": "array", "items": INSTANCE}}}),
                          **_errors(401, 403)},
        },
        "post": {
            "summary": "Register an instance by URL; the proxy reads its GET /me (admins)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["url"],
                "properties": {"url": {"type": "string", "description": "http://host:port of the instance"}},
            }}}},
            "responses": {**_ok(200, INSTANCE), **_ok(201, INSTANCE), **_ok(202, INSTANCE),
                          **_errors(400, 401, 403, 503)},
        },
    },
    "/services/{instance_id}": {"delete": {
        "summary": "Remove an instance: it gets no more tasks (admins)",
        "parameters": [{"name": "instance_id", "in": "path", "required": True, "schema": UUID}],
        "responses": {**_ok(200, {"type": "object", "required": ["instance_id", "state"],
                                  "properties": {"instance_id": UUID, "state": {"type": "string"}}}),
                      **_errors(400, 401, 403, 404, 503)},
    }},
}
DOCUMENT["paths"].update(PROXY_PATHS)

# --- works and tasks (seed 003): the {"code", "data"} / {"code", "msg"} envelope ----------------
HEX32 = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
TIME_Z = {"type": ["string", "null"], "pattern": "^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$"}
WORK_FAIL = {"type": "object", "required": ["code", "msg"],
             "properties": {"code": {"type": "integer", "minimum": 100000, "maximum": 999999}, "msg": {"type": "string"}}}


def _work_errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": WORK_FAIL}}} for c in codes}


def _work_ok(code: int, data: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": ["code"], "properties": {"code": {"const": 0}, "data": data}}
    return {str(code): {"description": "success", "content": {"application/json": {"schema": schema}}}}


WORK_FIELDS: dict[str, Any] = {
    "user_id": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"},
    "type": {"enum": ["STREAMING", "BATCH"]}, "category": {"enum": ["FLINK_SQL", "FLINK_JAR", "FLNK_JAR", "SHELL"]},
    "status": {"type": "integer", "minimum": 0, "maximum": 7}, "work_directory": {"type": ["string", "null"]},
    "main_class_name": {"type": ["string", "null"]},
    "extra_params": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
    "java_version": {"type": ["string", "null"]},
    "run_frequency": {"type": ["string", "null"], "description": "once, hourly, daily, weekly or [CRON_TZ=Zone] cron"},
    "command": {"type": ["string", "null"]}, "lambda_id": {"type": ["string", "null"]},
    "overlap": {"enum": ["skip", "allow", "cancel_previous"]}, "catchup": {"enum": ["one", "all", "none"]},
    "ttl": {"type": ["integer", "null"], "minimum": 1},
}
WORK = {"type": "object", "properties": {"work_id": HEX32, **WORK_FIELDS, "created_at": TIME_Z, "updated_at": TIME_Z,
                                         "deleted_at": TIME_Z, "next_run_at": TIME_Z}}
TASK = {"type": "object", "properties": {"task_id": HEX32, "work_id": HEX32, "status": {"type": "integer"},
                                         "started_at": TIME_Z, "ended_at": TIME_Z, "run_time": {"type": "integer"}}}
WORK_ID = {"name": "work_id", "in": "path", "required": True, "schema": HEX32}
PAGE = [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0},
         "description": "the page number, from 0: rows skipped = offset * limit"}]
WORK_FILTERS = [*PAGE, *({"name": n, "in": "query", "schema": {"type": "string"}}
                         for n in ("user_id", "name", "description", "run_frequency")),
                {"name": "status", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 7}},
                {"name": "order", "in": "query", "schema": {"type": "string"},
                 "description": "created_at, updated_at or name; '-' prefix or ':desc' for descending"}]

WORK_PATHS: dict[str, Any] = {
    "/api/v1/works": {
        "post": {"summary": "Create a work",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": {
                     "type": "object", "required": ["user_id", "name", "description", "type", "category"],
                     "properties": WORK_FIELDS}}}},
                 "responses": {**_work_ok(201, WORK), **_work_errors(400, 401, 403, 503)}},
        "get": {"summary": "List works (exact filters)", "parameters": WORK_FILTERS,
                "responses": {**_work_ok(200, {"type": "array", "items": WORK}), **_work_errors(400, 401, 403)}},
    },
    "/api/v1/works/search": {"get": {
        "summary": "Search works: case-insensitive substring of name, description or q (either)",
        "parameters": [*WORK_FILTERS, {"name": "q", "in": "query", "schema": {"type": "string"}}],
        "responses": {**_work_ok(200, {"type": "array", "items": WORK}), **_work_errors(400, 401, 403)}}},
    "/api/v1/works/{work_id}": {
        "get": {"summary": "A work", "parameters": [WORK_ID],
                "responses": {**_work_ok(200, WORK), **_work_errors(400, 401, 403, 404, 410)}},
        "patch": {"summary": "Change some fields of a work", "parameters": [WORK_ID],
                  "requestBody": {"required": True, "content": {"application/json": {"schema": {
                      "type": "object", "properties": WORK_FIELDS}}}},
                  "responses": {**_work_ok(200, WORK), **_work_errors(400, 401, 403, 404, 410, 503)}},
        "delete": {"summary": "Delete a work (soft)", "parameters": [WORK_ID],
                   "responses": {**_work_ok(200, {"type": "null"}), **_work_errors(400, 401, 403, 404, 410, 503)}},
    },
    "/api/v1/works/{work_id}/tasks": {
        "get": {"summary": "The tasks of a work, newest first", "parameters": [WORK_ID, *PAGE],
                "responses": {**_work_ok(200, {"type": "array", "items": TASK}),
                              **_work_errors(400, 401, 403, 404, 410)}},
        "post": {"summary": "Run the work now, outside its schedule", "parameters": [WORK_ID],
                 "responses": {**_work_ok(201, TASK), **_work_errors(400, 401, 403, 404, 410, 503)}},
    },
    "/api/v1/works/{work_id}/tasks/{task_id}": {"get": {
        "summary": "A task in full: its job, exit code and output",
        "parameters": [WORK_ID, {"name": "task_id", "in": "path", "required": True, "schema": HEX32}],
        "responses": {**_work_ok(200, TASK), **_work_errors(400, 401, 403, 404, 410)}}},
    "/api/v1/works/{work_id}/backfill": {"post": {
        "summary": "Run the work for every due time in a past range",
        "parameters": [WORK_ID],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["start", "end"], "additionalProperties": False,
            "properties": {"start": {"type": "string", "format": "date-time"},
                           "end": {"type": "string", "format": "date-time"}}}}}},
        "responses": {**_work_ok(202, {"type": "object"}), **_work_errors(400, 401, 403, 404, 409, 410, 503)}}},
}
DOCUMENT["paths"].update(WORK_PATHS)


# --- pipelines (seed 002; services/api/pipelines.py) ---------------------------------------------------

PIPELINE_NAME = {"name": "name", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}}
PIPELINE = {"type": "object", "required": ["name", "spec"],
            "properties": {"name": {"type": "string"}, "spec": {"type": "array"}, "user_id": {"type": "string"},
                           "created_at": NULLABLE_TIME, "updated_at": NULLABLE_TIME}}
ANY_BODY = {"description": "the pipeline's final message (any content type)", "content": {"*/*": {"schema": {}}}}
PIPELINE_CALL = {"summary": "Run the pipeline; the rest of the path is the service path",
                 "parameters": [PIPELINE_NAME, {"name": "wait", "in": "query", "schema": {"type": "boolean"}}],
                 "responses": {"200": ANY_BODY, "202": {"description": "accepted (?wait=false): the run id",
                               "content": {"application/json": {"schema": {"type": "object"}}}},
                               **_errors(400, 401, 404, 413)}}
PIPELINE_PATHS: dict[str, Any] = {
    "/api/pipelines": {"get": {"summary": "List the stored pipelines",
                               "responses": {**_ok(200, {"type": "object", "properties": {
                                   "pipelines": {"type": "array", "items": PIPELINE}}}), **_errors(401)}}},
    "/api/pipelines/{name}": {
        "put": {"summary": "Store a pipeline spec (parsed on save; a 400 names the element and the problem)",
                "parameters": [PIPELINE_NAME],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "array"}}}},
                "responses": {**_ok(200, PIPELINE), **_ok(201, PIPELINE), **_errors(400, 401, 403)}},
        "get": {"summary": "A stored pipeline", "parameters": [PIPELINE_NAME],
                "responses": {**_ok(200, PIPELINE), **_errors(400, 401, 404)}},
        "delete": {"summary": "Delete a pipeline", "parameters": [PIPELINE_NAME],
                   "responses": {**_ok(200, {"type": "object"}), **_errors(400, 401, 403, 404)}},
    },
    "/api/pipeline_runs/{run_id}": {"get": {
        "summary": "A run: its state and every step with its request, status, timing and output name",
        "description": "With `wait`, the answer comes once the run has ended, or when `wait` seconds "
                       "have passed, with the run as it is then.",
        "parameters": [{"name": "run_id", "in": "path", "required": True, "schema": UUID}, WAIT],
        "responses": {**_ok(200, {"type": "object", "required": ["run_id", "state", "steps"]}),
                      **_errors(400, 401, 403, 404)}}},
    "/p/{name}": {"get": PIPELINE_CALL, "post": PIPELINE_CALL, "put": PIPELINE_CALL, "delete": PIPELINE_CALL},
}
DOCUMENT["paths"].update(PIPELINE_PATHS)
