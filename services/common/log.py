"""One line per event on stderr: what the grader captures and a learner reads."""
from __future__ import annotations

import logging
import os
import sys


def get_logger(name: str | None = None) -> logging.Logger:
    service = name or os.environ.get("OTEL_SERVICE_NAME", "service")
    logger = logging.getLogger(service)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))
        logger.propagate = False
    return logger
