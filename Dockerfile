# syntax=docker/dockerfile:1
# The vectorai worker: the package, its Luigi tasks and the clients for Kafka,
# Pub/Sub and PostgreSQL. The compose stack's luigid service runs this image too.
FROM python:3.11-slim

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

# The whole repo, less what .dockerignore leaves out (virtualenvs, data, models, .env).
COPY . /app

# Extras of setup.py to install. `train` (TensorFlow, MLflow) lets the worker run the
# whole chain; a prediction-only image that uses models trained elsewhere can leave
# it out: docker compose build --build-arg EXTRAS=kafka,pubsub,postgres
ARG EXTRAS=train,kafka,pubsub,postgres

# constraints.txt pins the versions CI tested. The pip cache mount keeps reinstalls
# fast when only the code changed. The `scheduler` extra (SQLAlchemy, prometheus-client)
# is for luigid's task history and /metrics, which the pipeline itself does not need.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt -e ".[${EXTRAS},scheduler]" \
    && mkdir -p /app/data /app/models /var/lib/luigid \
    && chown vectorai /app/data /app/models /var/lib/luigid

USER vectorai

CMD ["luigi", "--module", "tasks", "PredictTask", "--scheduler-host", "luigid", "--scheduler-port", "8082"]
