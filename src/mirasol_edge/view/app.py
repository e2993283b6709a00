"""The ``--view`` page's Starlette app.

Routes (each checks the token when one is set: ``?token=`` or ``X-Mirasol-Token`` /
``Authorization: Bearer``; 403 otherwise): ``GET /`` the page; ``GET /events`` server-sent
events, the state as JSON whenever it changes; ``GET /state`` the same, once; ``GET /frame.jpg``
and ``GET /mel.png`` the latest images; ``POST /ask`` ``{"question": ...}`` asked of the stream
on a worker thread while pushes go on; ``GET /evidence/{id}`` an evidence clip this run wrote
(by the id its event carries: no path from the request is ever opened)."""

from __future__ import annotations

import asyncio
import hmac
import json
from importlib.resources import files

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mirasol_edge.errors import MirasolError
from mirasol_edge.runtime.results import check_question

from .state import ViewState

POLL_S = 0.2
KEEPALIVE_S = 15.0
NO_CACHE = {"Cache-Control": "no-store"}


def _token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return (request.query_params.get("token") or request.headers.get("x-mirasol-token")
            or (auth[7:] if auth.lower().startswith("bearer ") else None))


def make_app(state: ViewState, stream, token: str | None = None, mel_type: str = "image/png") -> Starlette:
    page = files("mirasol_edge.view").joinpath("page.html").read_text(encoding="utf-8")

    def guarded(endpoint):
        async def checked(request: Request):
            given = _token_of(request)
            if token is not None and not (given and hmac.compare_digest(given.encode(), token.encode())):
                return Response("403: this page needs its token (?token=...)\n", 403, media_type="text/plain")
            return await endpoint(request)
        return checked

    async def index(request: Request):
        return Response(page, media_type="text/html; charset=utf-8", headers=NO_CACHE)

    async def snapshot(request: Request):
        return JSONResponse(state.snapshot(), headers=NO_CACHE)

    async def events(request: Request):
        async def stream_state():
            sent, quiet = -1, 0.0
            while not state.stopping.is_set():
                if state.version != sent:
                    data = state.snapshot()
                    sent, quiet = data["version"], 0.0
                    yield f"data: {json.dumps(data)}\n\n"
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keepalive\n\n"
                await asyncio.sleep(POLL_S)
                quiet += POLL_S
                if await request.is_disconnected():
                    return
        return StreamingResponse(stream_state(), media_type="text/event-stream",
                                 headers={**NO_CACHE, "X-Accel-Buffering": "no"})

    def image(kind: str, content_type: str):
        async def serve(request: Request):
            data = getattr(state, kind)
            if data is None:
                return Response("no frame yet\n", 404, media_type="text/plain")
            return Response(data, media_type=content_type, headers=NO_CACHE)
        return serve

    async def ask(request: Request):
        try:
            body = await request.json()
            question = check_question(body["question"] if isinstance(body, dict) else None, "question")
        except (ValueError, KeyError, TypeError, MirasolError) as exc:
            return JSONResponse({"error": f"give {{\"question\": \"...\"}} ({exc})"}, 400)
        try:
            answer = await anyio.to_thread.run_sync(stream.ask, question)
        except Exception as exc:  # a closed stream, a server gone: said on the page
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, 409)
        return JSONResponse(state.add_answer(question, answer, "page"))

    async def evidence(request: Request):
        path = state.evidence(request.path_params["evidence_id"])
        if path is None or not path.is_file():
            return Response("no such evidence clip in this run\n", 404, media_type="text/plain")
        return FileResponse(path, media_type="video/mp4")

    routes = [Route("/", guarded(index)), Route("/state", guarded(snapshot)), Route("/events", guarded(events)),
              Route("/frame.jpg", guarded(image("frame", "image/jpeg"))),
              Route("/mel.png", guarded(image("mel", mel_type))),
              Route("/ask", guarded(ask), methods=["POST"]),
              Route("/evidence/{evidence_id:int}", guarded(evidence))]
    return Starlette(routes=routes)
