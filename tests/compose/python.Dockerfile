# Stand-in for python:3.11-slim, built from a Debian bookworm base imported from
# mmdebstrap (no registry is reachable where the compose test runs). Like the
# official image it has `python` and `pip` first on PATH and pip may install as root.
ARG DEBIAN_IMAGE=localhost/vectorai-test/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv passwd ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
CMD ["python3"]
