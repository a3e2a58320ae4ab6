"""vectorai: train an image classifier, stream images through a broker, classify them in batches.

The library knows nothing of Luigi; the tasks in ``tasks/`` read configuration and call it.
Heavy dependencies (TensorFlow, onnxruntime, Kafka, Pub/Sub clients) are imported where used.
"""

__version__ = "0.1.0"
