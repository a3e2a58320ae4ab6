# Stand-in for python:3.11 (the full image): the python:3.11-slim stand-in with a C compiler
# and Python's headers, for the Dockerfile's stage that compiles the resize extension.
ARG PYTHON_IMAGE=localhost/vectorai-test/python:3.11
FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc libc6-dev python3-dev \
    && rm -rf /var/lib/apt/lists/*
