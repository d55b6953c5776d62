"""FastAPI plumbing: JSON errors for everything, and uvicorn on 127.0.0.1:$PORT."""
from __future__ import annotations

import inspect
import json
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from .config import env_int
from .lifecycle import install_signal_handlers


class ApiError(Exception):
    """Raise from a handler to answer `status` with {"error": code, "detail": ...}."""

    def __init__(self, status: int, code: str, detail: Any = None) -> None:
        super().__init__(code)
        self.status, self.code, self.detail = status, code, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "detail": self.detail}, status_code=self.status)


# FastAPI >= 0.16x traces requests itself (a SERVER span per request on the global provider); the
# services open their own SERVER span, so without this every request would show two.
NO_NATIVE_TRACING = ({"telemetry": {"tracing": False}}
                     if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def json_app(title: str) -> FastAPI:
    app = FastAPI(title=title, **NO_NATIVE_TRACING)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": jsonable(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "internal_error", "detail": type(exc).__name__}, status_code=500)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def parse_body(raw: bytes, model: type[BaseModel], allow_empty: bool = False) -> tuple[Any, BaseModel]:
    """(parsed JSON, validated model) or ApiError 400 (not JSON) / 422 (wrong fields)."""
    if allow_empty and not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, "malformed_json", str(e)) from None
    try:
        return data, model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, "invalid_request", jsonable(e.errors(include_url=False))) from None


def serve(app: FastAPI) -> None:
    """Serve on 127.0.0.1:$PORT until SIGTERM/SIGINT (uvicorn drains in-flight requests).

    uvicorn re-raises the signal after its shutdown under the handler it found; ours only sets an
    event, so the process then returns normally: exit code 0, and atexit hooks (span flush) run.
    """
    install_signal_handlers()
    uvicorn.run(app, host="127.0.0.1", port=env_int("PORT", 8000), log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)
