"""Hostile: drive the instructor's terminal. Sends a span whose names are escape sequences (clear the
screen, retitle the window, write the clipboard with OSC 52, a hidden OSC 8 link, an 8-bit CSI, a bidi
override, rich markup), writes the same to its log, and dies: the log tail lands in the report's
message, the class table of `labkit grade`, `labkit recheck` and `labkit trace`. Every one of them must
show these as text (grader/report/safe_text.py)."""
import json
import os
import sys
import urllib.request

ESCAPES = ("\x1b[2J\x1b[H\x1b]0;graded 12/12\x07\x1b]52;c;ZWNobyBwd25lZA==\x07"
           "\x1b]8;;http://evil.invalid\x1b\\click\x1b]8;;\x1b\\\x9b31m\u202e[bold red]12/12[/]")

span = {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": ESCAPES, "kind": 2,
        "startTimeUnixNano": "1", "endTimeUnixNano": "2", "status": {"code": 2, "message": ESCAPES}}
body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": ESCAPES}}]},
                           "scopeSpans": [{"spans": [span]}]}]}
endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/")
try:
    request = urllib.request.Request(endpoint + "/v1/traces", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()
    print("ATTACK FAILED: span sent; it must reach no terminal raw", flush=True)
except Exception as e:  # noqa: BLE001 - a hostile submission reports what it could not do
    print(f"ATTACK FAILED: no span sent ({type(e).__name__})", flush=True)
for _ in range(3):
    print(ESCAPES, flush=True)
    print(ESCAPES, file=sys.stderr, flush=True)
raise SystemExit(ESCAPES)
