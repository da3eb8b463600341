"""Request-size limits for the HTTP servers (``icrl env serve`` here, ``icrl serve`` too): a body
over the limit is refused before it is read, parsed or tokenised.

A pure ASGI middleware: a declared ``Content-Length`` over the limit is answered at once; a
streamed (chunked) body is counted as it arrives and refused the moment it passes the limit, so
the server never holds more than the limit of one request's body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# What a refusal looks like in a server's own error shape: the message in, a JSON body out.
ErrorBody = Callable[[str], dict[str, Any]]


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with HTTP 413 and ``error_body(message)``."""

    def __init__(self, app: ASGIApp, max_bytes: int, error_body: ErrorBody) -> None:
        self.app, self.max_bytes, self.error_body = app, max_bytes, error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = refused = False

        async def counted() -> Message:
            # Past the limit the 413 goes out at once and the app is told the client left, so
            # it stops reading (a framework would otherwise turn any error here into its own).
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the refusal was the response
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)

    async def _refuse(self, send: Send) -> None:
        limit = f"{self.max_bytes / 2**20:g} MiB"
        body = json.dumps(self.error_body(f"the request body is larger than {limit}")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
