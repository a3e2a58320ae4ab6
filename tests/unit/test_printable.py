"""Control characters from a message never reach a terminal or a log raw (vectorai.printable)."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path

from hypothesis import given, strategies as st

from vectorai.printable import printable

REPO = Path(__file__).resolve().parents[2]
BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or ch in BIDI


@given(st.text())
def test_no_control_character_survives_and_nothing_else_changes(text):
    shown = printable(text)
    assert not any(_unsafe(ch) for ch in shown)
    if not any(_unsafe(ch) for ch in text):
        assert shown == text
    kept = printable(text, keep_newlines=True)
    assert not any(_unsafe(ch) and ch != "\n" for ch in kept) and kept.count("\n") == text.count("\n")


def test_an_osc_title_sequence_is_shown_as_text():
    assert printable("id\x1b]0;pwned\x07\r\n\u202eevil") == "id\\x1b]0;pwned\\x07\\x0d\\x0a\\u202eevil"


def test_log_lines_of_a_pipeline_process_escape_what_they_quote():
    """A process that imported the tasks (luigi, vectorai-results) logs a message's id escaped,
    whichever logger logs it, as ``%s`` or ``%r``, alone or in an exception."""
    script = ("import logging, tasks\n"
              "logging.basicConfig(format='%(name)s: %(message)s')\n"
              "log = logging.getLogger('vectorai.predict')\n"
              "bad = 'id\\x1b]0;pwned\\x07\\n\\u202e'\n"
              "log.warning('batch of %d from local (%s)', 3, bad)\n"
              "log.warning('repr %r', bad)\n"
              "log.warning('error: %s', ValueError(bad))\n"
              "logging.getLogger('kafka.conn').warning('%(id)s', {'id': bad})\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines == ["vectorai.predict: batch of 3 from local (id\\x1b]0;pwned\\x07\\x0a\\u202e)",
                     "vectorai.predict: repr 'id\\x1b]0;pwned\\x07\\n\\u202e'",
                     "vectorai.predict: error: id\\x1b]0;pwned\\x07\\x0a\\u202e",
                     "kafka.conn: id\\x1b]0;pwned\\x07\\x0a\\u202e"]


def test_handlers_still_read_the_arguments_as_logged():
    """Escaping happens when the message is made: a handler that reads a record's arguments (the
    Kafka transport keeps the exception of a refused bootstrap connection) gets the objects
    themselves. Wrapping them at construction hid a wrong SASL password behind a timeout."""
    import logging

    from vectorai.printable import PrintableLogRecord

    err = ConnectionError("SASL Authentication failed\x1b[2J")
    record = PrintableLogRecord("kafka.conn", logging.WARNING, __file__, 1, "Connection failed: %s %r",
                                (err, "bootstrap-0"), None)
    assert record.args[0] is err
    assert record.getMessage() == "Connection failed: SASL Authentication failed\\x1b[2J 'bootstrap-0'"
