"""The one logging set-up every daemon shares (store/logs.py): text or one JSON object per line."""
from __future__ import annotations

import argparse
import io
import json
import logging

import pytest

from store.logs import add_log_arguments, announce, setup_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_the_traceback(restore_root_logger):
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    log = logging.getLogger("berth.test")
    log.debug("not at INFO")
    log.info("two\nlines and a quote \" here")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed %s", "badly")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # one object per record, newlines escaped inside it
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines and a quote \" here" and first["level"] == "INFO"
    assert first["logger"] == "berth.test" and first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "failed badly" and second["level"] == "ERROR"
    assert "RuntimeError: boom" in second["exception"] and "Traceback" in second["exception"]


def test_text_format_and_levels(restore_root_logger):
    out = io.StringIO()
    setup_logging("WARNING", "text", out)
    logging.getLogger("berth.test").info("quiet")
    logging.getLogger("berth.test").warning("loud")
    assert "quiet" not in out.getvalue() and "berth.test WARNING loud" in out.getvalue()


def test_options_refuse_an_unknown_level_or_format():
    parser = argparse.ArgumentParser()
    add_log_arguments(parser)
    assert parser.parse_args(["--log-level", "debug"]).log_level == "DEBUG"
    assert parser.parse_args(["--log-level", "warn"]).log_level == "WARNING"
    for argv in (["--log-level", "LOUD"], ["--log-format", "xml"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_the_readiness_line_goes_to_stdout_and_to_the_log(restore_root_logger, capsys):
    out = io.StringIO()
    setup_logging("INFO", "json", out)
    announce("ready socket=/x http=1", logging.getLogger("berth.agent"))
    assert capsys.readouterr().out == "ready socket=/x http=1\n"
    assert json.loads(out.getvalue())["message"] == "ready socket=/x http=1"
