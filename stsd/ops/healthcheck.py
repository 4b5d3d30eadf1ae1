# -*- test-case-name: tests.test_dockerfile -*-
"""
C{python -m stsd.ops.healthcheck}: the container image's HEALTHCHECK.

Asks C{/healthz} on the metrics port that the configuration file names
(C{metrics.interface}, C{metrics.port}; the file is C{$STSD_CONFIG},
default C{/etc/stsd/stsd.yaml}, the image's); exits 0 on a 2xx answer
and 1 on anything else (refused, timed out, non-2xx, unreadable file),
with one line on stderr saying why.
"""

from __future__ import annotations

import os
import sys
import urllib.request

import yaml

from stsd.config import MetricsConfig

DEFAULT_CONFIG = "/etc/stsd/stsd.yaml"
TIMEOUT_SECONDS = 4.0


def healthz_url(config_path: str) -> str:
    """
    The C{/healthz} URL of the metrics port configured in C{config_path}
    (only the C{metrics} section is read: a health check does not validate).
    """
    with open(config_path, "rb") as f:
        document = yaml.safe_load(f) or {}
    metrics = (document.get("metrics") or {}) if isinstance(document, dict) else {}
    defaults = MetricsConfig()
    port = int(metrics.get("port", defaults.port))
    host = str(metrics.get("interface", defaults.interface))
    if host in ("0.0.0.0", ""):  # listening everywhere: ask over loopback
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> None:
    try:
        url = healthz_url(os.environ.get("STSD_CONFIG", DEFAULT_CONFIG))
        # urlopen raises on a refused connection, a timeout and any non-2xx answer.
        urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS).close()  # noqa: S310 - http only
    except Exception as e:  # noqa: BLE001 - any failure is "unhealthy"
        sys.stderr.write(f"unhealthy: {e}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
