"""The wire format of an image message, shared by every transport and documented in the README.

A message is payload bytes plus string attributes (Kafka headers, Pub/Sub attributes, or the
local queue's JSON envelope):

* ``id``            -- required, unique per source; rows are keyed on (source, id).
* ``content-type``  -- ``image/png``, ``image/jpeg`` or, for pixel bytes,
  ``application/x-ndarray; dtype=D; shape=S``: D is ``uint8`` or ``float32`` (little endian), S is
  ``H,W`` or ``H,W,C`` with C in 1, 3, 4, and the payload is the C-order pixel bytes. D and S may
  instead come as attributes of their own, ``dtype`` and ``shape`` (the first version of this
  format); StreamData sends the parameters, two attributes fewer for every consumer to parse.
* ``label``         -- optional true class index (an integer), for measuring accuracy.
* ``produced-at``   -- optional producer timestamp, RFC 3339 / ISO 8601 (``...Z`` or offset).

Nothing here ever unpickles, and sizes are checked before any pixel buffer is allocated.

Everything done to one message -- checking its attributes, decoding, and, for an image that is
not already the model's size, preprocessing -- runs inside one isolation boundary
(``Failures.run``): *any* exception there makes that message a failure with a one-line reason,
and never reaches the rest of the batch. No decoder needs a catch-all of its own, and a failure
mode nobody listed (a Pillow ``SyntaxError``, a timestamp that overflows) cannot stop a stream.

``wire`` writes messages and reads the content-type, ``attributes`` checks the id, label and
timestamp, ``failures`` is the isolation boundary, and ``decode`` turns messages into images.
"""

from vectorai.messages.attributes import MAX_ID, id_problem
from vectorai.messages.decode import (DecodedImages, DecodedMessage, DecodeLimits, decode_message,
                                      decode_messages)
from vectorai.messages.failures import MAX_REASON, Failures, InvalidMessage, failure_reason
from vectorai.messages.wire import (CONTENT_TYPES, JPEG, MAX_CONTENT_TYPE, NDARRAY, PNG, encode_image,
                                    format_timestamp, ndarray_type, stored_content_type, utc_now)

__all__ = [
    "CONTENT_TYPES", "JPEG", "MAX_CONTENT_TYPE", "MAX_ID", "MAX_REASON", "NDARRAY", "PNG",
    "DecodeLimits", "DecodedImages", "DecodedMessage", "Failures", "InvalidMessage",
    "decode_message", "decode_messages", "encode_image", "failure_reason", "format_timestamp",
    "id_problem", "ndarray_type", "stored_content_type", "utc_now",
]
