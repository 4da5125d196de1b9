"""Reading a multipart upload within the size limit: `image` files + one `settings` JSON field."""
from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from .protocol import Rejected, parse_settings_field


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise Rejected(413, f"request body of {int(declared)} bytes exceeds the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise Rejected(413, f"request body exceeds the limit of {max_bytes} bytes")
    return bytes(body)


async def read_multipart(request: Request, max_bytes: int, max_images: int) -> tuple[list[bytes], object]:
    """(image files, settings JSON value) of a multipart/form-data request."""
    content_type = request.headers.get("content-type", "").lower()
    # A url-encoded form can only hold the settings: it gets the engine's "no image given" message.
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise Rejected(422, "expected multipart/form-data with one or more `image` files and a `settings` field, "
                            f"got content-type {request.headers.get('content-type')!r}")
    body = await read_body(request, max_bytes)
    replayed = False

    async def receive() -> dict:  # the body once, then the connection's own messages (disconnect)
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await request.receive()

    try:
        form = await Request(request.scope, receive).form(max_files=max_images + 1, max_fields=8,
                                                           max_part_size=max_bytes)
    except HTTPException as exc:  # starlette's MultiPartException, as a 400
        raise Rejected(422, f"malformed multipart upload: {exc.detail}") from None
    try:
        unknown = sorted(set(form.keys()) - {"image", "settings"})
        if unknown:
            raise Rejected(422, f"unknown form field(s) {unknown}; send `image` files and one `settings` field")
        images = []
        for i, item in enumerate(form.getlist("image")):
            if not isinstance(item, UploadFile):
                raise Rejected(422, f"image[{i}] must be a file upload, got a text field")
            images.append(await item.read())
        settings = form.getlist("settings")
        if len(settings) != 1:
            raise Rejected(422, f"expected one `settings` field (a JSON object), got {len(settings)}")
        text = await settings[0].read() if isinstance(settings[0], UploadFile) else settings[0]
        return images, parse_settings_field(text)
    finally:
        await form.close()
