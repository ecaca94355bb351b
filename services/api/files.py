"""The data manager: upload a file (raw body or multipart) and read it back.

Bytes go to the blob store first, then a `file.stored` event is produced; the `files`
projection holds the metadata the rest of the API reads.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from events.base import new_id, utcnow
from events.codec import encode
from events.files import FileStored
from events.topics import FILE_EVENTS
from services.api.errors import BadRequest, Forbidden, Gone, NotFound, TooLarge, Unavailable, json_response
from services.api.requests import authenticate, parse_uuid
from services.kafka import BrokerUnavailable

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(name: str | None) -> str:
    """A file name usable in a job's working directory: no path, no surprises."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = _SAFE_NAME.sub("_", base)[:200].lstrip(".")
    return base or "file"


async def upload(request: Request) -> Response:
    user = authenticate(request)
    config = request.app.state.config
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > config.max_upload:
        raise TooLarge(f"upload of {declared} bytes is over the limit of {config.max_upload} bytes")
    content_type = request.headers.get("content-type", "application/octet-stream")
    file_id = new_id()
    with tempfile.TemporaryDirectory(dir=config.data_dir) as tmp:
        path = Path(tmp) / "upload"
        if content_type.startswith("multipart/form-data"):
            name, content_type = await _save_multipart(request, path, config.max_upload)
        else:
            name = request.query_params.get("name")
            size = 0
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > config.max_upload:
                        raise TooLarge(f"upload is over the limit of {config.max_upload} bytes")
                    out.write(chunk)
        size, sha256 = request.app.state.blobs.put_file(file_id, path)
    event = FileStored(
        event_id=new_id(), stream_id=file_id, sequence=1, occurred_at=utcnow(), correlation_id=file_id,
        actor=user.user_id, owner_id=user.user_id, name=safe_name(name), size=size, sha256=sha256,
        content_type=content_type.split(";")[0].strip() or "application/octet-stream",
    )
    try:
        await request.app.state.bus.send(FILE_EVENTS, file_id, encode(event))
    except BrokerUnavailable as exc:
        request.app.state.blobs.delete(file_id)
        raise Unavailable(f"the upload was not accepted: {exc}") from exc
    return json_response({"file_id": file_id, "name": event.name, "size": size, "sha256": sha256}, 201)


async def _save_multipart(request: Request, path: Path, limit: int) -> tuple[str | None, str]:
    try:
        form = await request.form(max_files=1, max_fields=10, max_part_size=limit)
    except Exception as exc:  # the multipart parser raises several kinds for malformed bodies
        raise BadRequest(f"malformed multipart body: {exc}") from None
    try:
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise BadRequest("multipart upload needs a file part named 'file'")
        size = 0
        with open(path, "wb") as out:
            while chunk := await part.read(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"upload is over the limit of {limit} bytes")
                out.write(chunk)
        return part.filename, part.content_type or "application/octet-stream"
    finally:
        await form.close()


async def download(request: Request) -> Response:
    user = authenticate(request)
    file_id = parse_uuid(request.path_params["file_id"], "file_id")
    pool = request.app.state.pool

    async def fetch() -> object:
        return await pool.fetchrow(
            "SELECT f.*, j.deleted AS job_deleted FROM files f LEFT JOIN jobs j ON j.job_id = f.job_id "
            "WHERE f.file_id = $1",
            file_id,
        )

    row: dict[str, object] | None = await request.app.state.watch.read(file_id, fetch)  # type: ignore[assignment]
    if row is None:
        raise NotFound(f"no file {file_id}")
    if row["purged_at"] is not None or row["job_deleted"]:
        raise Gone(f"file {file_id} was purged")
    if row["owner_id"] != user.user_id and not user.is_admin:
        raise Forbidden(f"file {file_id} belongs to another user")
    path = request.app.state.blobs.path(file_id)
    if path is None:
        raise Gone(f"file {file_id} is no longer stored")
    return FileResponse(
        path, media_type=str(row["content_type"]), filename=str(row["name"]),
        headers={"X-Skyjobs-Sha256": str(row["sha256"]), "X-Skyjobs-File-Id": file_id},
    )
