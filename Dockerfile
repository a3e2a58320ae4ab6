# syntax=docker/dockerfile:1
# The vectorai worker: the package, its Luigi tasks and the clients for Kafka,
# Pub/Sub and PostgreSQL. The compose stack's luigid service runs this image too.
#
# BASE_IMAGE: any image with Python 3.11 whose `python` and `pip` come first on PATH
# (the compose test builds a stand-in from Debian where no registry is reachable).
ARG BASE_IMAGE=python:3.11-slim
# BUILD_IMAGE: the same Python with a C compiler and Python's headers (python:3.11 is the full
# image python:3.11-slim is cut from), for the resize extension alone.
ARG BUILD_IMAGE=python:3.11

# vectorai/_resample.c, Pillow's resize in 0.4 of its CPU (vectorai.resize): compiled here, so
# that the image needs no compiler and only the compiled module goes into it. The `ls` fails the
# build where setup.py's optional extension could not be compiled.
FROM ${BUILD_IMAGE} AS extension
WORKDIR /src
COPY setup.py /src/
COPY vectorai/_resample.c /src/vectorai/
RUN touch README.md \
    && python setup.py --quiet build_ext --inplace \
    && ls vectorai/_resample*.so

FROM ${BASE_IMAGE}

# PYTHONPATH: the `luigi` script puts its own directory on sys.path, not the
# working directory, so `--module tasks` needs the repo on the path.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

# Match the host user (build arg) so files written into bind-mounted ./data and
# ./models belong to them.
ARG APP_UID=1000
RUN useradd --create-home --uid "${APP_UID}" --shell /usr/sbin/nologin vectorai

WORKDIR /app

# Extras of setup.py to install. `train` (TensorFlow, MLflow) lets the worker run the
# whole chain; a prediction-only image that uses models trained elsewhere can leave
# it out: docker compose build --build-arg EXTRAS=kafka,pubsub,postgres
ARG EXTRAS=train,kafka,pubsub,postgres

# The dependencies first, from the two files that name them, so that a change to the
# code alone reuses this layer; setup.py reads README.md only for the package's long
# description, so an empty one stands in for it here and editing the README reinstalls
# nothing. constraints.txt pins the versions CI tested. The
# `scheduler` extra (SQLAlchemy, prometheus-client) is for luigid's task history and
# /metrics, which the pipeline itself does not need. When ./wheels holds wheels
# (`pip download -c constraints.txt -d wheels ...` on a machine that can reach an
# index), pip installs from them alone, for builds without network access; it is
# mounted, not copied, so the wheels never end up in the image.
COPY setup.py constraints.txt /app/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=wheels,target=/tmp/wheels \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /tmp/wheels; fi \
    && touch README.md \
    && pip install "$@" -c constraints.txt -e ".[${EXTRAS},scheduler]"

# The code. No second pip install: the editable install above already made the
# console scripts, and PYTHONPATH finds the packages in /app.
COPY luigi.cfg /app/
COPY docker/luigid.cfg /app/docker/
COPY vectorai /app/vectorai
COPY --from=extension /src/vectorai/_resample*.so /app/vectorai/
COPY tasks /app/tasks
RUN mkdir -p /app/data /app/models /var/lib/luigid \
    && chown vectorai /app/data /app/models /var/lib/luigid

USER vectorai

CMD ["luigi", "--module", "tasks", "PredictTask", "--scheduler-host", "luigid", "--scheduler-port", "8082"]
