"""What `labkit check` prints at 80 columns: the learner's own errors without the clients' chatter
about the grader's faults, one line per fault, and the verdicts next to the score."""
from __future__ import annotations

import io

from rich.console import Console

from grader.checks import CheckResult
from grader.report import RunReport
from grader.report.console import print_report
from grader.report.logs import quiet

RDKAFKA = "%6|1764789000.123|FAIL|rdkafka#consumer-1| [thrd:127.0.0.1:41234/bootstrap]: Disconnected (after 5012ms in state UP)"
REDIS_TRACEBACK = """Traceback (most recent call last):
  File "catalog/app.py", line 40, in get
    cached = self.redis.get(key)
redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused."""
OWN_TRACEBACK = """Traceback (most recent call last):
  File "read_model/consumer.py", line 28, in handle
    event = parse_event(msg.value())
services.common.orders.events.BadEvent: missing fields: order_id"""


def test_client_noise_is_left_out_and_own_errors_kept():
    log = "\n".join([RDKAFKA] * 5 + [REDIS_TRACEBACK, "catalog INFO ready", OWN_TRACEBACK,
                                      "error connecting in 'pool-1': connection failed: server closed the connection",
                                      "        This probably means the server terminated abnormally"])
    text = quiet(log)
    assert "rdkafka" not in text.split("[")[0] and "redis.exceptions" not in text and "pool-1" not in text
    assert "BadEvent: missing fields" in text and "catalog INFO ready" in text
    assert "left out" in text.splitlines()[-1]
    assert "%3|1764789000.1|FAIL|rdkafka#producer-1| error" in quiet("%3|1764789000.1|FAIL|rdkafka#producer-1| error")


def _report() -> RunReport:
    faults = [{"fault": "crash-point", "target": "read_model", "fid": i, "start": 10.0 + i, "end": 14.0 + i,
               "effective": True, "reason": None, "detail": {"how": "fallback kill"},
               "description": "SIGKILL read_model just after its database commit #49 (pid 1287), a plain SIGKILL "
                              "if not reached within 20 s, counting only transactions that changed rows"}
              for i in range(12)]
    results = [CheckResult.verdict("no-lost-orders", "No acknowledged order is lost", 3, False,
                                   "4 of 977 acknowledged items never applied " + "x" * 80, ["k-1 lost"], hint="h"),
               CheckResult.verdict("ordering", "Ordering", 1, True, "fine")]
    return RunReport(lab="lab-1", title="Exactly-once", submission="labs/lab-1-x/starter", seed=5, runtime="native",
                     started_at="2026-01-01T00:00:00+00:00", duration=100, results=results, faults=faults,
                     logs={"read_model": "\n".join([RDKAFKA] * 50 + [OWN_TRACEBACK])}, crashed=["read_model"])


def test_at_80_columns_one_line_per_fault_and_the_verdicts_last():
    out = io.StringIO()
    print_report(_report(), Console(file=out, width=80, color_system=None, force_terminal=False))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    fault_lines = [line for line in lines if "SIGKILL read_model just after" in line]
    assert len(fault_lines) == 12 and all(line.rstrip().endswith("bit") for line in fault_lines)
    assert "|FAIL|rdkafka" not in out.getvalue() and "BadEvent" in out.getvalue()
    assert lines[-2].startswith("score 1/4") and "FAIL no-lost-orders" in lines[-2]
