# stsd: Security Token Service for MinIO tenants on Kubernetes.
#   docker build -t stsd .
#   docker run -v /path/to/tls:/etc/stsd/tls:ro -p 4223:4223 stsd
# The default config (etc/stsd.yaml) expects the certificate and key at
# /etc/stsd/tls/tls.crt and /etc/stsd/tls/tls.key, the layout of a mounted kubernetes.io/tls
# Secret; mount a ConfigMap over /etc/stsd/stsd.yaml to change anything else.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY setup.py /src/
COPY stsd /src/stsd
COPY twisted /src/twisted

# Install, then (as root, from a directory without a twisted/ in it) write Twisted's
# plugin cache into site-packages/twisted/plugins: the non-root runtime user could not,
# and would rescan every plugin at each start.  Fail the build if the plugin is not found.
RUN pip install --no-cache-dir /src \
 && rm -rf /src \
 && cd / \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && python -c "from twisted.plugin import getPlugins; from twisted.application.service import IServiceMaker; assert 'stsd' in {p.tapname for p in getPlugins(IServiceMaker)}, 'stsd plugin not found'"

COPY etc/stsd.yaml /etc/stsd/stsd.yaml

ENV PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /
EXPOSE 4223

# -n: stay in the foreground; --pidfile=: no pidfile (as PID 1 it would look stale).
ENTRYPOINT ["twistd", "-n", "--pidfile=", "stsd"]
CMD ["--config", "/etc/stsd/stsd.yaml"]
