"""The HTTP side of ``ldm serve``: the static page and a small JSON API (FastAPI).

::

    GET  /                    the page (static/index.html; its CSS and JavaScript under /static)
    GET  /api/model           the run: each plugin's input, sampler settings, limits
    POST /api/sample          a request (``WebRequest``) -> 202 and the job, or an error
    GET  /api/jobs/ID         the job: queued (ahead), running (progress), done (files), failed
    GET  /api/jobs/ID/FILE    one of its images (``0000.png``..., ``grid.png``) or samples.json

Every error is JSON ``{"error": message, "fields": {plugin: message}}`` with a 4xx status (5xx
only for a bug, which is logged and leaves the server up). Bodies are read up to a limit before
they are parsed, and JSON is parsed strictly (no NaN).
"""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ldmcore.schema import format_validation_error
from ldmcore.serve.jobs import QueueFull
from ldmcore.serve.service import RequestError, SamplingService
from ldmcore.serve.uploads import MAX_UPLOAD_BYTES
from ldmcore.serve.web_request import WebRequest

STATIC = Path(__file__).parent / "static"
MAX_BODY = 3 * MAX_UPLOAD_BYTES  # base64 of two uploads and the rest
JOB_ID = re.compile(r"^[0-9]{4,9}$")
JOB_FILE = re.compile(r"^([0-9]{4,6}\.png|grid\.png|samples\.json)$")
MAX_MESSAGE = 2000  # a message quoting a huge input is cut


def error(status: int, message: str, fields: dict[str, str] | None = None) -> JSONResponse:
    cut = {k: _cut(v) for k, v in (fields or {}).items()}
    return JSONResponse({"error": _cut(message), "fields": cut}, status_code=status)


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " [...]"


def create_app(service: SamplingService) -> FastAPI:
    app = FastAPI(title="ldm serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        traceback.print_exception(exc)
        return error(500, f"internal error ({type(exc).__name__}); the server keeps running, and "
                          f"its log has the traceback.")

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/model")
    def model() -> dict:
        return service.describe()

    @app.post("/api/sample")
    async def sample(request: Request) -> JSONResponse:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return error(413, f"the request is larger than {MAX_BODY // 2**20} MiB; send "
                                  f"smaller images.")
        try:
            raw = json.loads(body, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"the request is not JSON ({exc}); send a JSON object such as "
                              f'{{"cond": {{"NAME": "value"}}, "n": 4, "seed": 0}}.')
        try:
            web = WebRequest.model_validate(raw)
        except ValidationError as exc:
            return error(422, format_validation_error(exc, model=WebRequest))
        try:
            view = await _in_thread(service.submit, web)
        except RequestError as exc:
            return error(422, str(exc), exc.fields)
        except QueueFull as exc:
            return error(503, str(exc))
        return JSONResponse(view, status_code=202)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> JSONResponse:
        view = service.queue.view(job_id) if JOB_ID.match(job_id) else None
        if view is None:
            return error(404, f"no job {job_id!r} on this server (jobs are kept until it stops).")
        return JSONResponse(view)

    @app.get("/api/jobs/{job_id}/{name}")
    def job_file(job_id: str, name: str) -> Response:
        view = service.queue.view(job_id) if JOB_ID.match(job_id) else None
        if view is None or view["state"] != "done" or not JOB_FILE.match(name):
            return error(404, f"no file {name!r} of a finished job {job_id!r}.")
        path = service.root / job_id / name
        if not path.is_file():
            return error(404, f"no file {name!r} in job {job_id!r}.")
        return FileResponse(path)

    return app


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def _in_thread(fn, *args):
    """Run a blocking check (plugins' parse reads files) off the event loop."""
    return await run_in_threadpool(fn, *args)
