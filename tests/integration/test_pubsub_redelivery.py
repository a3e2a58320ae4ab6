"""A poison Pub/Sub message redelivered to other processes is one dead letter: its fingerprint is
taken over canonical JSON (sorted keys), where the protobuf attribute map's order differs from
one process to the next. Real Pub/Sub emulator, separate processes, one SQLite results file."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from tests.unit.helpers import tiny_onnx_model
from vectorai.transports.base import OutgoingMessage
from vectorai.transports.pubsub import PubSubTransport

pytestmark = pytest.mark.pubsub

#: One process: consume, store the batch, and die before acknowledging it (``crash``), so that
#: Pub/Sub redelivers the message to the next one; or consume and acknowledge (``finish``).
WORKER = textwrap.dedent("""
    import json, sys
    from vectorai import db as results_db
    from vectorai.inference import OnnxClassifier
    from vectorai.predict import run_predictions
    from vectorai.transports.pubsub import PubSubTransport

    settings, model, url, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

    class CrashBeforeAck(PubSubTransport):
        def acknowledge(self, messages):
            raise RuntimeError("the process died after its commit, before its acknowledgement")

    database = results_db.connect(url)
    transport = (CrashBeforeAck if mode == "crash" else PubSubTransport)(**settings)
    try:
        report = run_predictions([transport], OnnxClassifier(model), database, batch_size=8, timeout_ms=1500)
        print(json.dumps(report.to_dict()))
    finally:
        transport.close()
""")


def test_a_poison_message_redelivered_to_other_processes_is_one_dead_letter(pubsub_settings, tmp_path):
    tiny_onnx_model(tmp_path / "tiny.onnx")
    # Many attributes, so that three processes listing them in the same order is unlikely.
    attributes = {"id": "poison", "content-type": "image/png", "label": "1",
                  **{f"attribute-{name}": name * 3 for name in "abcdefghij"}}
    with PubSubTransport(**pubsub_settings) as producer:
        producer.publish([OutgoingMessage(b"not a png at all", attributes)])
        producer.flush(30)
    url = f"sqlite:///{tmp_path / 'results.sqlite'}"

    def worker(mode: str, hash_seed: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WORKER, json.dumps(pubsub_settings), str(tmp_path / "tiny.onnx"),
                               url, mode], cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": str(hash_seed)})

    for seed in (1, 2):
        crashed = worker("crash", seed)
        assert crashed.returncode != 0 and "before its acknowledgement" in crashed.stderr, crashed.stderr[-3000:]
    finished = worker("finish", 3)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report["consumed"] == 1 and report["dead_letters"] == 1  # it did come again, a third time
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        dead = db.execute("SELECT message_id, reason, attributes FROM dead_letter").fetchall()
    assert len(dead) == 1, dead
    message_id, reason, stored = dead[0]
    assert message_id == "poison" and reason.startswith("cannot decode image") and json.loads(stored) == attributes
