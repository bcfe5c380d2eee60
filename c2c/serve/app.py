"""The OpenAI-compatible HTTP server: `create_app` (FastAPI), `serve` (uvicorn) and `running` (a background one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

from ..model.pair import C2CModel
from .engine import Engine, Job, Post, Refused
from .errors import APIError, error_body
from .protocol import CHAT, COMPLETION, Endpoint, Limits, authorize, field, parse_options, stream, whole

try:  # the HTTP server is the optional extra c2c[serve]; chat() needs none of it
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError:  # pragma: no cover
    FastAPI = None

log = logging.getLogger("c2c.serve")


@dataclass
class Server:
    pair: C2CModel
    engine: Engine
    model_name: str
    api_key: str | None
    limits: Limits


def create_app(pair: C2CModel, *, model_name: str = "c2c", api_key: str | None = None,
               max_prompt_tokens: int = 4096, max_tokens_limit: int = 1024, default_max_tokens: int = 256,
               max_body_bytes: int = 1 << 20, max_queue: int = 64, max_batch: int = 8,
               batch_window_ms: float = 10.0, max_context_chars: int = 32000, max_running: int = 4) -> FastAPI:
    """An OpenAI-compatible app: /v1/chat/completions, /v1/completions, /v1/models, /health.

    Requests may add ``"c2c": false`` to be answered by the receiver alone, and ``"sharer_context": TEXT``
    (at most ``max_context_chars`` characters) for a text only the sharers read. ``max_queue`` bounds the prompts
    waiting for the model (more get 429); ``max_batch`` prompts arriving within ``batch_window_ms`` of each
    other with the same sampling run as one batch. Up to ``max_running`` batches are in flight, taking turns on
    the model at decoding steps (1: each batch runs to its end before the next starts). With ``api_key``, /v1
    requires ``Authorization: Bearer KEY``."""
    if FastAPI is None:
        raise ImportError("the server needs fastapi and uvicorn; install them with: pip install 'c2c[serve]'")
    sizes = dict(max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
                 max_queue=max_queue, max_batch=max_batch, max_context_chars=max_context_chars, max_running=max_running)
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    server = Server(pair, Engine(pair, max_batch, batch_window_ms / 1000, max_queue, max_running), model_name, api_key,
                    Limits(max_prompt_tokens, max_tokens_limit, min(default_max_tokens, max_tokens_limit),
                           max_body_bytes, max_context_chars))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="c2c", lifespan=lifespan)
    app.state.server = server
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "waiting": server.engine.waiting, **server.engine.stats}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        authorize(request, api_key)
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "c2c",
            "receiver": pair.receiver.name, "sharers": [s.name for s in pair.sharers]}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(request, server, CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(request, server, COMPLETION)

    return app


def serve(pair: C2CModel, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **app_options) -> None:
    """Run the server until interrupted; ``app_options`` go to `create_app`."""
    if host not in ("127.0.0.1", "localhost", "::1") and not app_options.get("api_key"):
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    uvicorn.run(create_app(pair, **app_options), host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread inside the block; yields its base URL (port 0: a free port)."""
    sock = socket.create_server((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


# -------------------------------------------------------------------------------------------- one request
async def _complete(request: Request, server: Server, endpoint: Endpoint) -> Response:
    """Validate, submit and answer one request of either endpoint, streamed or whole."""
    authorize(request, server.api_key)
    body = await _read_json(request, server.limits.max_body_bytes)
    model = field(body, "model", (str,), f"the model name {server.model_name!r}")
    if model != server.model_name:
        raise APIError(404, f"model {model!r} does not exist; this server serves {server.model_name!r} "
                            "(see GET /v1/models)", param="model", code="model_not_found")
    prompts = endpoint.prompts(body)
    options = parse_options(body, server.limits)
    if len(prompts) > server.engine.max_queue:
        raise APIError(400, f"the request has {len(prompts)} prompts; this server takes at most "
                            f"{server.engine.max_queue} per request (its queue): send them in several requests",
                       param=endpoint.param, code="too_many_prompts")
    inbox, request_id = Inbox(), object()
    top_logprobs = endpoint.top_logprobs(body)
    jobs = [Job(prompt, options.max_tokens, options.sampling, inbox.poster(index), options.stop, options.context,
                request=request_id, param=endpoint.param, max_prompt_tokens=server.limits.max_prompt_tokens,
                top_logprobs=top_logprobs) for index, prompt in enumerate(prompts)]
    server.engine.submit(jobs)
    watcher = asyncio.create_task(_watch_disconnect(request, jobs))
    try:  # the engine tokenizes and checks the prompts (the handler never touches a tokenizer): wait for its word
        prompt_tokens = await inbox.accepted(len(jobs))
    except BaseException:
        watcher.cancel()
        for job in jobs:
            job.cancel.set()
        raise
    head = {"id": f"{endpoint.id_prefix}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": server.model_name}
    events = _events(inbox, jobs, watcher)
    if options.stream:
        return StreamingResponse(stream(events, head, endpoint, prompt_tokens, options.include_usage,
                                         top_logprobs is not None),
                                 media_type="text/event-stream")
    return JSONResponse(await whole(events, head, endpoint, prompt_tokens, top_logprobs is not None))


class Inbox:
    """The events of one request's jobs: posted from the model's thread, read on the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, str, object]] = asyncio.Queue()
        self.early: deque[tuple[int, str, object]] = deque()  # read while waiting for acceptance

    def poster(self, index: int) -> Post:
        return lambda kind, value: self.loop.call_soon_threadsafe(self.events.put_nowait, (index, kind, value))

    async def accepted(self, jobs: int) -> int:
        """The request's prompt tokens once the engine has accepted every job; the first refusal as a 400.
        Events that arrive meanwhile (another batch's deltas, a cancelled job's done) are kept for `_events`."""
        tokens, waiting = 0, set(range(jobs))
        while waiting:
            index, kind, value = await self.events.get()
            if kind == "error" and isinstance(value, Refused):
                raise APIError(400, str(value), param=value.param, code=value.code)
            if index in waiting and kind in ("accepted", "done", "error"):
                waiting.discard(index)
                tokens += value if kind == "accepted" else 0
            if kind != "accepted":
                self.early.append((index, kind, value))
        return tokens


async def _events(inbox: Inbox, jobs: list[Job], watcher: asyncio.Task) -> AsyncIterator[tuple[int, str, object]]:
    """(job index, kind, value) until every job is done; leaving early, or the client leaving (``watcher``),
    cancels the jobs."""
    try:
        remaining = len(jobs)
        while remaining:
            index, kind, value = inbox.early.popleft() if inbox.early else await inbox.events.get()
            if kind == "accepted":
                continue
            remaining -= kind in ("done", "error")
            yield index, kind, value
    finally:
        watcher.cancel()
        for job in jobs:
            job.cancel.set()


async def _watch_disconnect(request: Request, jobs: list[Job]) -> None:
    """Cancel the jobs when the client leaves: with the body read, the next ASGI message is the disconnect
    (no polling, which would wake the event loop for every waiting request)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.cancel.set()


# -------------------------------------------------------------------------------------------- body and errors
async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, read no further than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(f"{declared} bytes", limit)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(f"more than {limit} bytes", limit)
    except ClientDisconnect:
        log.info("a client left while sending its request body (%d bytes read); nothing was answered", len(body))
        raise APIError(400, "the request body ended early: the client disconnected") from None
    try:
        data = json.loads(body)
    except ValueError as error:
        raise APIError(400, f"the body is not valid JSON ({error}); send a JSON object") from error
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _too_large(size: str, limit: int) -> APIError:
    return APIError(413, f"the request body is {size}; this server accepts at most {limit} bytes: send a shorter "
                         "prompt (or start the server with a larger max_body_bytes)", code="body_too_large")


async def _api_error(request: Request, error: APIError) -> Response:
    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body, status_code=error.status, headers=headers)


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Unknown paths and methods, in OpenAI's error shape."""
    message = (f"{error.detail}: {request.method} {request.url.path}; this server serves POST /v1/chat/completions, "
               "POST /v1/completions, GET /v1/models and GET /health")
    return JSONResponse(error_body(message, "invalid_request_error"), status_code=error.status_code)
