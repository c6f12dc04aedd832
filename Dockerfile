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
# it (about 1 s).
# (From /, so that the installed package is the one compiled, not /src/explainers.)
RUN cd / && NUMBA_CACHE_DIR=/numba-cache /opt/venv/bin/python -m explainers.warmup

FROM python:3.11-slim
# The numba cache compiled at build time sits on the volume's path, so a named volume starts
# with it (Docker copies the image's files into an empty named volume). numba uses a cache
# directory only if it can write there (the package directory is read-only to the sidecar
# user); on a CPU other than the build machine's it compiles once more, into the volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/var/lib/sidecar/.numba-cache
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/sidecar --create-home sidecar
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=sidecar:sidecar /numba-cache /var/lib/sidecar/.numba-cache
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
