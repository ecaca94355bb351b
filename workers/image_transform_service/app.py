"""image_transform_service: GET /me, POST /run {"task_id", "args": [image, operation, parameters]}.

    operation   parameters                     result
    resize      {"width": W, "height": H}      the image scaled to W x H (either may be omitted: keeps the ratio)
    grayscale   {}                             the image in shades of grey
    rotate      {"angle": degrees}             the image turned counter-clockwise, canvas enlarged to fit

The answer: {"image": base64 PNG, "format": "PNG", "width", "height", "mode"}. A bad image, operation
or parameter answers 400 {"error": ...}: the proxy does not retry those on another instance.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from workers.serving import TaskError, answer, on_task_error, task_args

NAME = "image_transform_service"
OPERATIONS = ("resize", "grayscale", "rotate")
MAX_SIDE = 10_000
MAX_PIXELS = 40_000_000

ME: dict[str, Any] = {
    "name": NAME,
    "description": "Resize, grayscale or rotate an image (Pillow). The answer is the resulting image as base64 PNG.",
    "input": [
        {"argument_name": "image", "argument_description": "the picture: PNG, JPEG, GIF, WebP, BMP or TIFF",
         "type": "image"},
        {"argument_name": "operation", "argument_description": "resize, grayscale or rotate", "type": "str"},
        {"argument_name": "parameters",
         "argument_description": 'resize: {"width": W, "height": H}; rotate: {"angle": degrees}; grayscale: {}',
         "type": "json"},
    ],
    "task_path": "/run",
}


def transform(data: bytes, operation: str, parameters: Any) -> dict[str, Any]:
    """The whole job, synchronous (run in a thread): decode, transform, encode as PNG."""
    if operation not in OPERATIONS:
        raise TaskError(f"operation must be one of {', '.join(OPERATIONS)}, got {operation!r}")
    if not isinstance(parameters, dict):
        raise TaskError("parameters must be a JSON object")
    try:
        opened = Image.open(io.BytesIO(data))
        if opened.width * opened.height > MAX_PIXELS:
            raise TaskError(f"image of {opened.width}x{opened.height} is over {MAX_PIXELS} pixels")
        opened.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise TaskError(f"not a readable image: {exc}") from None
    image: Image.Image = opened
    if operation == "resize":
        image = _resize(image, parameters)
    elif operation == "grayscale":
        image = ImageOps.grayscale(image)
    else:
        angle = parameters.get("angle")
        if isinstance(angle, bool) or not isinstance(angle, int | float) or not math.isfinite(angle):
            raise TaskError('rotate needs {"angle": degrees}')
        image = image.rotate(float(angle), expand=True)
    out = io.BytesIO()
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGBA")
    image.save(out, format="PNG")
    return {"image": base64.b64encode(out.getvalue()).decode(), "format": "PNG", "width": image.width,
            "height": image.height, "mode": image.mode}


def _resize(image: Image.Image, parameters: dict[str, Any]) -> Image.Image:
    sides: dict[str, int] = {}
    for name in ("width", "height"):
        value = parameters.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE):
            raise TaskError(f"resize: {name} must be a whole number from 1 to {MAX_SIDE}")
        if value is not None:
            sides[name] = value
    if not sides:
        raise TaskError('resize needs {"width": W, "height": H} (one of them at least)')
    width = sides.get("width") or max(1, round(image.width * sides["height"] / image.height))
    height = sides.get("height") or max(1, round(image.height * width / image.width))
    if width * height > MAX_PIXELS:
        raise TaskError(f"resize: {width}x{height} is over {MAX_PIXELS} pixels")
    return image.resize((width, height))


def create_app(max_concurrency: int = 4) -> Starlette:
    me = {**ME, "max_concurrency": max_concurrency}
    slots = asyncio.Semaphore(max_concurrency)

    async def describe(request: Request) -> Response:
        return answer(me)

    async def run(request: Request) -> Response:
        args = await task_args(request)
        if len(args) != 3:
            raise TaskError("expected 3 arguments: image, operation, parameters")
        image, operation, parameters = args
        if not isinstance(image, str):
            raise TaskError("image must be base64 data")
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise TaskError("image is not valid base64") from None
        async with slots:
            return answer(await asyncio.to_thread(transform, data, operation, parameters))

    return Starlette(routes=[Route("/me", describe, methods=["GET"]), Route("/run", run, methods=["POST"])],
                     exception_handlers={TaskError: on_task_error})
