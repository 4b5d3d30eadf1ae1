# -*- test-case-name: tests.test_config -*-
"""
The stsd configuration file: its schema, its validation and its defaults.

The public types are the frozen dataclasses below.  Each key is declared once, on its
dataclass, with its type, its default and the check that turns the raw YAML value into the
stored one (C{field(metadata=_spec(...))}); L{parse_config} walks those declarations,
so the schema, the defaults and the validation cannot drift apart.

Adding a section: write a C{@dataclass(frozen=True, kw_only=True)} whose fields carry
C{_spec(...)} metadata, add it as a field of L{Config} (with
C{default_factory}), document its keys in C{etc/stsd.yaml} (a test enforces this), and,
only if it has a rule spanning several keys, add an entry to C{_SECTION_CHECKS}.

Validation reads the TLS and CA files named by the config, so it happens once, at
start-up, in L{load_config}; nothing here runs at import time.  Error messages name
the dotted key and never quote the contents of any file they read.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Any, get_type_hints
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import (
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

__all__ = [
    "Config",
    "ConfigError",
    "KubernetesConfig",
    "LimitsConfig",
    "MetricsConfig",
    "RateConfig",
    "STSConfig",
    "ServerConfig",
    "TenantsConfig",
    "load_config",
    "parse_config",
    "redacted",
]

#: MinIO refuses AssumeRole durations above 12 hours.
MINIO_MAX_DURATION_SECONDS = 43200
#: AWS STS and MinIO refuse durations below 15 minutes.
MIN_DURATION_SECONDS = 900


class ConfigError(Exception):
    """
    The configuration is unusable.  C{str()} is one line, C{"<key>: <problem>"}, where
    C{key} is the dotted config key (C{"server.port"}) or, for problems with the file
    as a whole, its path.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}".replace("\r", "\\r").replace("\n", "\\n")


# -- checks ----------------------------------------------------------------------------
#
# A check takes the dotted key, the raw value from YAML and the directory relative paths
# are resolved against; it returns the value to store or raises ConfigError.

_Check = Callable[[str, object, str | None], object]

_CHECK = "stsd.config.check"
_SECRET = "stsd.config.secret"


def _spec(check: _Check, *, secret: bool = False) -> Mapping[str, object]:
    """Field metadata: how to validate a key, and whether to hide it from logs."""
    return {_CHECK: check, _SECRET: secret}


def _shown(value: object) -> str:
    """A short rendering of a (non-secret) config value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(low: int, high: int, why: str = "") -> Callable[[str, object, str | None], int]:
    def check(key: str, value: object, base_dir: str | None) -> int:
        # bool is an int subclass, and YAML 1.1 reads "yes"/"on" as True.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not low <= value <= high
        ):
            raise ConfigError(
                key,
                f"expected an integer between {low} and {high}{why}, got {_shown(value)}",
            )
        return value

    return check


def _seconds(key: str, value: object, base_dir: str | None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond float range
            seconds = math.inf
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    raise ConfigError(key, f"must be a positive number of seconds, got {_shown(value)}")


def _text(key: str, value: object, base_dir: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"expected a non-empty string, got {_shown(value)}")
    return value


def _optional(check: _Check) -> _Check:
    def optional(key: str, value: object, base_dir: str | None) -> object:
        return None if value is None else check(key, value, base_dir)

    return optional


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path} ({e.strerror or e})") from None


def _certificates(key: str, path: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(key, path))
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(key, f"no PEM certificate found ({path})")
    return certificates


def _private_key(key: str, path: str) -> PrivateKeyTypes:
    try:
        return load_pem_private_key(_read(key, path), password=None)
    except TypeError:
        raise ConfigError(
            key, f"encrypted private keys are not supported ({path})"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(key, f"not a PEM private key ({path})") from None


def _path(key: str, value: object, base_dir: str | None) -> str:
    """A file path, resolved against the config's directory."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a file path, got {_shown(value)}")
    return os.path.join(base_dir, value) if base_dir is not None else value


def _file(content: Callable[[str, str], object] = _read) -> _Check:
    """A path to a readable file whose content passes C{content(key, path)}."""

    def check(key: str, value: object, base_dir: str | None) -> str:
        path = _path(key, value, base_dir)
        content(key, path)
        return path

    return check


def _boolean(key: str, value: object, base_dir: str | None) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_shown(value)}")
    return value


def _choice(*allowed: str) -> _Check:
    def check(key: str, value: object, base_dir: str | None) -> str:
        if value not in allowed:
            raise ConfigError(
                key, f"expected one of {', '.join(allowed)}, got {_shown(value)}"
            )
        return value

    return check


def _non_negative_seconds(high: float) -> _Check:
    def check(key: str, value: object, base_dir: str | None) -> float:
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and 0 <= value <= high
        ):
            return float(value)
        raise ConfigError(
            key, f"expected a number of seconds between 0 and {high:g}, got {_shown(value)}"
        )

    return check


@dataclass(frozen=True)
class RateConfig:
    """A token bucket: C{rate} tokens per second, at most C{burst} saved up."""

    rate: float
    burst: int


def _rate(key: str, value: object, base_dir: str | None) -> RateConfig:
    if not isinstance(value, Mapping) or set(value) != {"rate", "burst"}:
        raise ConfigError(key, f"expected {{rate: N, burst: N}}, got {_shown(value)}")
    rate = _seconds(f"{key}.rate", value["rate"], base_dir)  # any positive number
    burst = _integer(1, 10**9)(f"{key}.burst", value["burst"], base_dir)
    return RateConfig(rate=rate, burst=burst)


_PLACEHOLDERS = ("namespace", "tenant")


def _url_template(key: str, value: object, base_dir: str | None) -> str:
    if not isinstance(value, str) or not value.startswith(("https://", "http://")):
        raise ConfigError(
            key, f"expected an https:// or http:// URL, got {_shown(value)}"
        )
    allowed = ", ".join(f"{{{name}}}" for name in _PLACEHOLDERS)
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as e:
        raise ConfigError(
            key, f"malformed template ({e}); placeholders are {allowed}"
        ) from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in _PLACEHOLDERS or spec or conversion:
            shown = (
                name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
            )
            raise ConfigError(
                key, f"unknown placeholder {{{shown}}} (allowed: {allowed})"
            )
    if not urlsplit(value.format(namespace="ns", tenant="t")).hostname:
        raise ConfigError(key, f"URL has no host, got {_shown(value)}")
    return value


# -- the schema ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The TLS listener clients send STS requests to."""

    interface: str = field(default="0.0.0.0", metadata=_spec(_text))
    port: int = field(default=4223, metadata=_spec(_integer(1, 65535)))
    # Both files are read by _check_server, which needs the two together.
    tls_cert: str = field(metadata=_spec(_path))
    tls_key: str = field(metadata=_spec(_path))
    request_timeout_seconds: float = field(default=10.0, metadata=_spec(_seconds))
    # The graceful stop on SIGTERM (stsd.ops.drain): /readyz turns 503 at once,
    # new connections are taken for the delay, requests in flight then have
    # the grace to finish. terminationGracePeriodSeconds exceeds both.
    shutdown_delay_seconds: float = field(
        default=5.0, metadata=_spec(_non_negative_seconds(300.0)))
    shutdown_grace_seconds: float = field(
        default=20.0, metadata=_spec(_non_negative_seconds(600.0)))
    # The garbage-collector tuning of stsd.ops.gctuning (freeze after the initial sync).
    gc_tuning: bool = field(default=True, metadata=_spec(_boolean))


@dataclass(frozen=True, kw_only=True)
class KubernetesConfig:
    """How stsd reaches the Kubernetes API."""

    kubeconfig: str | None = field(default=None, metadata=_spec(_optional(_file())))
    audience: str = field(default="sts.min.io", metadata=_spec(_text))
    resync_seconds: float = field(default=30.0, metadata=_spec(_seconds))
    timeout_seconds: float = field(default=10.0, metadata=_spec(_seconds))
    watch: bool = field(default=True, metadata=_spec(_boolean))
    token_verification: str = field(
        default="tokenreview", metadata=_spec(_choice("tokenreview", "jwks"))
    )
    token_cache_seconds: float = field(
        default=10.0, metadata=_spec(_non_negative_seconds(10.0))
    )


@dataclass(frozen=True, kw_only=True)
class TenantsConfig:
    """How stsd reaches the MinIO tenants."""

    endpoint: str | None = field(default=None, metadata=_spec(_optional(_url_template)))
    cluster_domain: str = field(default="cluster.local", metadata=_spec(_text))
    ca_file: str | None = field(
        default=None, metadata=_spec(_optional(_file(_certificates)))
    )
    timeout_seconds: float = field(default=10.0, metadata=_spec(_seconds))
    # Connections open or opening to one tenant host at a time; more calls wait.
    max_connections: int = field(default=64, metadata=_spec(_integer(1, 10_000)))
    authorization: str = field(
        default="parent-user", metadata=_spec(_choice("parent-user", "session-policy"))
    )


_DURATION = _integer(
    MIN_DURATION_SECONDS,
    MINIO_MAX_DURATION_SECONDS,
    " (MinIO's AssumeRole limit)",
)


@dataclass(frozen=True, kw_only=True)
class STSConfig:
    """Limits on the credentials issued."""

    default_duration_seconds: int = field(default=3600, metadata=_spec(_DURATION))
    max_duration_seconds: int = field(
        default=MINIO_MAX_DURATION_SECONDS, metadata=_spec(_DURATION)
    )
    reuse_seconds: float = field(default=60.0, metadata=_spec(_non_negative_seconds(3600.0)))


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """The plain-HTTP port for Prometheus and kubelet probes."""

    interface: str = field(default="0.0.0.0", metadata=_spec(_text))
    port: int = field(default=9090, metadata=_spec(_integer(1, 65535)))
    # Connections the metrics port holds at once; one more is closed at once.
    max_connections: int = field(default=64, metadata=_spec(_integer(1, 10_000)))


@dataclass(frozen=True, kw_only=True)
class LimitsConfig:
    """Abuse limits (token buckets), generous enough for a 1,000-replica rollout."""

    failed_auth_per_client: RateConfig = field(
        default=RateConfig(rate=5.0, burst=20), metadata=_spec(_rate)
    )
    per_serviceaccount: RateConfig = field(
        default=RateConfig(rate=50.0, burst=1000), metadata=_spec(_rate)
    )
    max_tracked_keys: int = field(default=100_000, metadata=_spec(_integer(100, 10**7)))


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration file; each field is one top-level section."""

    server: ServerConfig
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    tenants: TenantsConfig = field(default_factory=TenantsConfig)
    sts: STSConfig = field(default_factory=STSConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


# -- rules spanning several keys of a section -------------------------------------------


def _public_key(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _check_server(section: str, server: ServerConfig) -> None:
    leaf = _certificates(f"{section}.tls_cert", server.tls_cert)[0]
    key = _private_key(f"{section}.tls_key", server.tls_key)
    if _public_key(key.public_key()) != _public_key(leaf.public_key()):
        raise ConfigError(f"{section}.tls_key", f"does not match {section}.tls_cert")


def _check_sts(section: str, sts: STSConfig) -> None:
    if sts.default_duration_seconds > sts.max_duration_seconds:
        raise ConfigError(
            f"{section}.default_duration_seconds",
            f"expected an integer between {MIN_DURATION_SECONDS} and "
            f"{section}.max_duration_seconds ({sts.max_duration_seconds}), "
            f"got {sts.default_duration_seconds}",
        )


_SECTION_CHECKS: Mapping[type, Callable[[str, Any], None]] = MappingProxyType(
    {ServerConfig: _check_server, STSConfig: _check_sts}
)

# -- parsing ---------------------------------------------------------------------------


def _known(names: Any) -> str:
    return ", ".join(sorted(names))


def _parse_section(section: str, cls: type, data: object, base_dir: str | None) -> Any:
    if data is None:  # "kubernetes:" with every key commented out
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            section, f"expected a mapping of keys, got {type(data).__name__}"
        )
    schema: dict[str, Field[Any]] = {f.name: f for f in fields(cls)}
    for name in data:
        if name not in schema:
            raise ConfigError(
                f"{section}.{name}", f"unknown key (known: {_known(schema)})"
            )
    values = {}
    for name, spec in schema.items():
        key = f"{section}.{name}"
        if name in data:
            values[name] = spec.metadata[_CHECK](key, data[name], base_dir)
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise ConfigError(key, "required key is missing")
    result = cls(**values)
    if cls in _SECTION_CHECKS:
        _SECTION_CHECKS[cls](section, result)
    return result


def _sections() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def parse_config(data: object, *, base_dir: str | None = None) -> Config:
    """
    Validate an already-parsed config mapping and build a L{Config}.

    Relative file paths are resolved against C{base_dir} (the config file's directory);
    with C{base_dir=None} they are kept as given.  Raises L{ConfigError} for the
    first problem found.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            "top level", f"expected a mapping of sections, got {type(data).__name__}"
        )
    sections = _sections()
    for name in data:
        if name not in sections:
            raise ConfigError(str(name), f"unknown section (known: {_known(sections)})")
    return Config(
        **{
            name: _parse_section(name, cls, data.get(name), base_dir)
            for name, cls in sections.items()
        }
    )


class _Loader(yaml.SafeLoader):
    """C{yaml.safe_load}, except that a key given twice is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_shown(key)}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_config(path: str) -> Config:
    """
    Read, parse and validate the YAML config file at C{path}.

    Raises L{ConfigError} whose message names the offending key, or C{path} for a
    file that cannot be read or is not a YAML mapping.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(
            path, f"cannot read config file ({e.strerror or e})"
        ) from None
    try:
        data = yaml.load(raw, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as e:
        # Only the position and the problem: the snippet would quote the file.
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        if isinstance(e, yaml.reader.ReaderError):  # not UTF-8/16 text
            problem = f"{e.reason} at offset {e.position}"
        else:
            problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(path, f"not valid YAML ({where}{problem})") from None
    if data is None:
        raise ConfigError(
            path, "empty config file (server.tls_cert and server.tls_key are required)"
        )
    if not isinstance(data, Mapping):
        raise ConfigError(
            path,
            f"expected a mapping of sections at the top level, got {type(data).__name__}",
        )
    return parse_config(data, base_dir=os.path.dirname(os.path.abspath(path)))


def _plain(value: object) -> object:
    # Nested records (a RateConfig) become mappings, as they were written.
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def redacted(config: Config) -> dict[str, dict[str, object]]:
    """
    The effective configuration as plain data for the start-up log line.  This is the one
    place that decides what may be logged: keys declared C{_spec(..., secret=True)} are
    replaced by C{"<redacted>"}.
    """
    return {
        section.name: {
            key.name: "<redacted>"
            if key.metadata.get(_SECRET)
            else _plain(getattr(getattr(config, section.name), key.name))
            for key in fields(getattr(config, section.name))
        }
        for section in fields(Config)
    }
