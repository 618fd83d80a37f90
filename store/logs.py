"""How every Berth daemon logs: ``--log-level`` and ``--log-format text|json`` through :mod:`logging`, to stderr.

In ``store/`` beside :mod:`store.ops` because every daemon imports this room already (the CNI daemon too, through
``ipam``), so no room has to import ``berth/`` for it. ``json`` writes one object per line, the shape journald's
and Loki's JSON parsers take: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, and ``exception``
(the traceback text) when there is one.

A daemon's one-line readiness announcement (``ready socket=...``, ``dnsd: listening on ...``) is not a log record:
scripts and tests read it from stdout to learn that the daemon serves and on which ports. :func:`announce` writes
it there and logs it too, so the log tells the same story.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {"time": f"{seconds}.{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False)


def _level(text: str) -> str:
    level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(text.upper(), text.upper())
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(LEVELS)}")
    return level


def add_log_arguments(parser: argparse.ArgumentParser, default_level: str = "INFO") -> None:
    parser.add_argument("--log-level", type=_level, default=default_level,
                        help=f"least severe records logged: {', '.join(LEVELS)} (default {default_level})")
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="text lines, or json: one object per line with time, level, logger, message "
                             "and exception (default text)")


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Replace the root logger's handlers with one writing ``fmt`` to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def setup_from_args(args: argparse.Namespace) -> None:
    setup_logging(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))


def announce(line: str, logger: logging.Logger | None = None) -> None:
    """The readiness line on stdout (for whoever started the daemon), and the same in the log."""
    (logger or logging.getLogger("berth")).info("%s", line)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
