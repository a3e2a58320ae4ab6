# syntax=docker/dockerfile:1
# MLflow tracking server with the PostgreSQL driver for its backend store.
# BASE_IMAGE: as in ../Dockerfile, any Python 3.11 image with `python` and `pip` on PATH.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same MLflow version as the worker's client, from the repo's pinned versions;
# from ./wheels alone when it holds wheels (see ../Dockerfile).
COPY constraints.txt /tmp/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,source=wheels,target=/tmp/wheels \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /tmp/wheels; fi \
    && pip install "$@" -c /tmp/constraints.txt mlflow psycopg2-binary

# The artifact store is a named volume mounted here; a fresh volume takes this
# directory's owner, so the server can write to it without running as root.
RUN useradd --create-home --shell /usr/sbin/nologin mlflow \
    && mkdir /mlartifacts \
    && chown mlflow /mlartifacts

USER mlflow
WORKDIR /home/mlflow

EXPOSE 5000
CMD ["mlflow", "server", "--host=0.0.0.0", "--port=5000"]
