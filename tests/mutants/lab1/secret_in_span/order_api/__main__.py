from fastapi import Request
from opentelemetry import trace

from services.common.http import serve
from services.common.orders.api import create_app
from services.common.telemetry import extract_http
from services.order_api.app import OrderApi

tracer = trace.get_tracer("order_api")
app = create_app(OrderApi)


@app.middleware("http")
async def audit(request: Request, call_next):
    # BUG: every header goes into the span, Authorization (a credential) included
    headers = {f"http.request.header.{name}": value for name, value in request.headers.items()}
    with tracer.start_as_current_span("audit request", context=extract_http(request.headers), attributes=headers):
        return await call_next(request)


serve(app)
