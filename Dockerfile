# stsd: Security Token Service for MinIO tenants on Kubernetes.
#   docker build -t stsd:0.1.0 .
#   docker run -v /path/to/tls:/etc/stsd/tls:ro -p 4223:4223 -p 9090:9090 stsd:0.1.0
# The default config (etc/stsd.yaml) expects the certificate and key at
# /etc/stsd/tls/tls.crt and /etc/stsd/tls/tls.key, the layout of a mounted kubernetes.io/tls
# Secret; mount a ConfigMap over /etc/stsd/stsd.yaml to change anything else.
# Kubernetes manifests: etc/kubernetes/ (kubectl apply -k etc/kubernetes).
#
# For a build that cannot drift, pin the base image by digest as well
# (FROM python:3.11-slim@sha256:...); the Python dependencies are pinned by requirements.lock.
FROM python:3.11-slim

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="stsd" \
      org.opencontainers.image.description="Security Token Service for MinIO tenants on Kubernetes (AssumeRoleWithWebIdentity for ServiceAccount tokens)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

COPY requirements.lock setup.py /src/
COPY stsd /src/stsd
COPY twisted /src/twisted

# Install with every dependency held to the exact version in requirements.lock, then (as
# root, from / where there is no twisted/ directory to shadow the installed package) write
# Twisted's plugin cache into site-packages/twisted/plugins: the non-root runtime user
# could not, and would rescan every plugin at each start.  Fail the build if the plugin is
# not found.
WORKDIR /
RUN pip install --no-cache-dir --constraint /src/requirements.lock /src \
 && rm -rf /src \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && python -c "from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker; assert 'stsd' in {p.tapname for p in getPlugins(IServiceMaker)}, 'stsd plugin not found'"

COPY etc/stsd.yaml /etc/stsd/stsd.yaml

ENV PYTHONDONTWRITEBYTECODE=1
# Numeric user and group (the "nonroot" ids of distroless images), so that Kubernetes'
# runAsNonRoot can verify them without an /etc/passwd entry.
USER 65532:65532
# 4223: the STS (TLS, server.port).  9090: plain-HTTP /metrics, /healthz, /readyz
# (metrics.port), used by the health check below and by the Kubernetes probes.
EXPOSE 4223 9090

# For docker/podman; Kubernetes ignores HEALTHCHECK and uses the Deployment's probes.
# No curl in the slim image: stsd.ops.healthcheck asks /healthz with Python's urllib on the
# metrics port the config file names (metrics.port); exit status 1 marks the container
# unhealthy.  Started with another --config?  Set STSD_CONFIG to that file too.
ENV STSD_CONFIG=/etc/stsd/stsd.yaml
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "stsd.ops.healthcheck"]

# -n: stay in the foreground; --pidfile=: no pidfile (as PID 1 it would look stale).
ENTRYPOINT ["twistd", "-n", "--pidfile=", "stsd"]
CMD ["--config", "/etc/stsd/stsd.yaml"]
