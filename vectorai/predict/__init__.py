"""The stream-to-database loop: consume -> decode -> preprocess -> infer -> insert -> acknowledge.

Per batch: onnxruntime calls of ``CHUNK`` images, one database transaction, then one
acknowledgement. A message that cannot be decoded goes to the dead-letter table in the same
transaction and is acknowledged with its batch, so it neither blocks the run nor comes back
forever. Every per-message step runs inside ``messages.Failures.run``, so no message can fail
the run; only what concerns a whole batch (the database, the model, the transport) does, and
its error names the batch's source and positions.

``loop`` drives the steps (``run_predictions``); ``stages`` decodes and labels a batch; ``shadow``
scores it with a second model, best effort; ``concurrency`` holds the inference thread and the
decoding pool; ``report`` the run's counts; ``dead_letters`` the rows of messages that failed;
``memory`` the garbage collector's and malloc's settings for the run.
"""

from vectorai.predict.concurrency import (CHUNK, CHUNK_INPUT_BYTES, DECODE_SLICE, POOL_MIN_PAYLOAD_BYTES, chunk_images,
                                          default_decode_threads)
from vectorai.predict.dead_letters import DEAD_LETTER_ATTRIBUTES_CAP, canonical_json
from vectorai.predict.loop import PredictionLoop, run_predictions
from vectorai.predict.memory import YOUNG_OBJECTS_PER_MESSAGE, give_large_buffers_back
from vectorai.predict.report import RunReport, SourceCounts
from vectorai.predict.shadow import load_shadow, shadow_rows
from vectorai.predict.stages import ClassifiedBatch, DecodedBatch, decode_batch, label_batch

__all__ = [
    "CHUNK", "CHUNK_INPUT_BYTES", "DECODE_SLICE", "DEAD_LETTER_ATTRIBUTES_CAP", "POOL_MIN_PAYLOAD_BYTES",
    "YOUNG_OBJECTS_PER_MESSAGE", "ClassifiedBatch", "DecodedBatch", "PredictionLoop", "RunReport", "SourceCounts",
    "canonical_json", "chunk_images", "decode_batch", "default_decode_threads", "give_large_buffers_back",
    "label_batch", "load_shadow", "run_predictions", "shadow_rows",
]
