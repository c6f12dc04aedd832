# syntax=docker/dockerfile:1
# The explaining sidecar: `docker build -t explaining-sidecar .`
#
#   docker run --rm -p 8080:8080 -p 8081:8081 \
#     -e SIDECAR_PROXY__UPSTREAM=http://model-server:9000 \
#     -v sidecar-data:/var/lib/sidecar explaining-sidecar
#
# Stream events to Kafka instead of local files (the spool under /var/lib/sidecar keeps them
# while the broker is away, so give it a volume):
#
#     -e SIDECAR_SINK__KIND=kafka -e SIDECAR_KAFKA__BOOTSTRAP_SERVERS=kafka-0:9092,kafka-1:9092
#
# Any key of the config file can be overridden the same way: SIDECAR_<SECTION>__<KEY>.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY explainers ./explainers
# A virtualenv that the runtime stage copies whole: no compilers or build caches ship.
RUN python -m venv /opt/venv && /opt/venv/bin/pip install .
# Compile the explainer's numba kernels now (19 s on a busy 2-core machine; 26 s inside a
# first start beside a loading model) into a cache the runtime stage ships; starts then read
# it (about 1 s). numba keys its cache by CPU: compiled for this build machine's own, the
# cache would miss on any other CPU and every container would compile again. "generic"
# (any CPU of the image's architecture, set in both stages) was as fast for single rows on
# our x86-64 machine. (From /, so that the installed package is the one compiled, not
# /src/explainers: the cache is keyed by the source file's path and content.)
# scripts/docker_warm_start.sh runs these steps without a Docker engine.
ENV NUMBA_CPU_NAME=generic
RUN cd / && NUMBA_CACHE_DIR=/numba-cache /opt/venv/bin/python -m explainers.warmup

FROM python:3.11-slim
# The numba cache compiled at build time, outside the volume: a volume mounted on
# /var/lib/sidecar (a bind mount, or a named volume kept from an older image) would hide it
# or serve an older one. numba uses a cache directory only if it can write there (it checks
# by writing a file), so it belongs to the sidecar user; it reads the kernels and writes
# nothing while they match. With a read-only root filesystem numba cannot use it and
# compiles into ~/.cache (the volume) on the first start instead.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    NUMBA_CPU_NAME=generic
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sidecar --create-home sidecar
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=sidecar:sidecar /numba-cache /opt/numba-cache
# Listen on all interfaces inside the container; everything else keeps its documented default.
# Relative paths (events, spool, review store under var/) resolve in the working directory.
COPY <<'TOML' /etc/sidecar/sidecar.toml
[proxy]
host = "0.0.0.0"
port = 8080

[control]
host = "0.0.0.0"
port = 8081
TOML
USER sidecar
WORKDIR /var/lib/sidecar
VOLUME ["/var/lib/sidecar"]
EXPOSE 8080 8081
# slim has no curl; the standard library does the probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2)"]
CMD ["sidecar", "serve", "--config", "/etc/sidecar/sidecar.toml"]
