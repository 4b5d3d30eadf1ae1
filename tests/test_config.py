"""Tests for stsd.config, etc/stsd.yaml and the twistd plugin module."""

from __future__ import annotations

import ast
import atexit
import copy
import dataclasses
import functools
import datetime
import json
import math
import os
import re
import shutil
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from stsd.config import (
    Config,
    ConfigError,
    KubernetesConfig,
    ServerConfig,
    STSConfig,
    TenantsConfig,
    load_config,
    parse_config,
    redacted,
)
from tests._trial import cases, expand, temporary_directory

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "stsd.yaml"
PLUGIN = ROOT / "twisted" / "plugins" / "stsd_plugin.py"

SECRET_MARKER = "SuperSecretKeyMaterialDoNotLog"


# -- fixtures ----------------------------------------------------------------------------


def _self_signed(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@dataclasses.dataclass(frozen=True)
class PKI:
    dir: Path
    cert: str  # self-signed certificate for `key`
    key: str
    other_cert: str  # an unrelated certificate ...
    other_key: str  # ... and its key
    chain: str  # cert followed by other_cert
    encrypted_key: str  # `key`, encrypted with a password
    secret_garbage: str  # a "key" file that is not PEM but contains SECRET_MARKER
    key_body_lines: tuple[str, ...]  # the base64 lines of `key`


@functools.cache
def shared_pki() -> PKI:
    """The test files, made once per run (tests only read them), removed at exit."""
    d = Path(tempfile.mkdtemp(prefix="stsd-config-pki-"))
    atexit.register(shutil.rmtree, d, True)
    key, cert = _self_signed("stsd.test")
    other_key, other_cert = _self_signed("other.test")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    other_pem = other_cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _key_pem(key)
    files = {
        "tls.crt": cert_pem,
        "tls.key": key_pem,
        "other.crt": other_pem,
        "other.key": _key_pem(other_key),
        "chain.crt": cert_pem + other_pem,
        "encrypted.key": _key_pem(key, b"password"),
        "garbage.key": (
            f"-----BEGIN PRIVATE KEY-----\n{SECRET_MARKER}\n-----END PRIVATE KEY-----\n"
        ).encode(),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    body = tuple(
        line
        for line in key_pem.decode().splitlines()
        if line and not line.startswith("-----")
    )
    return PKI(
        dir=d,
        cert=str(d / "tls.crt"),
        key=str(d / "tls.key"),
        other_cert=str(d / "other.crt"),
        other_key=str(d / "other.key"),
        chain=str(d / "chain.crt"),
        encrypted_key=str(d / "encrypted.key"),
        secret_garbage=str(d / "garbage.key"),
        key_body_lines=body,
    )


def minimal_config(pki: PKI) -> dict[str, Any]:
    return {"server": {"tls_cert": pki.cert, "tls_key": pki.key}}


def _with(
    data: dict[str, Any], section: str, key: str, value: object
) -> dict[str, Any]:
    data = copy.deepcopy(data)
    data.setdefault(section, {})[key] = value
    return data


def _error(data: object, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _schema() -> Iterator[tuple[str, str, dataclasses.Field[Any]]]:
    """(section, key, field) for every key of the schema, in schema order."""
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(hints[section.name]):
            yield section.name, key.name, key


# -- defaults and types --------------------------------------------------------------------


# -- structure: sections and keys ------------------------------------------------------------


# -- server -------------------------------------------------------------------------------


# -- seconds ------------------------------------------------------------------------------

SECONDS = [
    ("kubernetes", "resync_seconds"),
    ("kubernetes", "timeout_seconds"),
    ("tenants", "timeout_seconds"),
]


# -- sts durations --------------------------------------------------------------------------


# -- TLS files ------------------------------------------------------------------------------


# -- kubernetes.kubeconfig and tenants.ca_file -------------------------------------------------


# -- tenants.endpoint -----------------------------------------------------------------------


# -- relative paths --------------------------------------------------------------------------


def _copy_pki(pki: PKI, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        (into / name).write_bytes((pki.dir / name).read_bytes())


# -- load_config: the file itself ---------------------------------------------------------------


def _load_error(path: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


# -- secrets never reach error messages ------------------------------------------------------


# -- redacted -----------------------------------------------------------------------------------


# -- etc/stsd.yaml --------------------------------------------------------------------------------


def _example_text(pki: PKI) -> str:
    text = EXAMPLE.read_text()
    assert "/etc/stsd/tls/tls.crt" in text and "/etc/stsd/tls/tls.key" in text
    return text.replace("/etc/stsd/tls/tls.crt", pki.cert).replace(
        "/etc/stsd/tls/tls.key", pki.key
    )


# -- the twistd plugin ----------------------------------------------------------------------------


# -- keys added with hardening, operability and performance ----------------------------------------


@expand
class ConfigTests(SynchronousTestCase):
    def test_schema_helper_covers_every_section(self) -> None:
        sections = [f.name for f in dataclasses.fields(Config)]
        assert sections[:4] == ["server", "kubernetes", "tenants", "sts"]
        assert {s for s, _, _ in _schema()} == set(sections)

    def test_defaults(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        config = parse_config(minimal)
        assert config == Config(server=ServerConfig(tls_cert=pki.cert, tls_key=pki.key))
        assert config.server.interface == "0.0.0.0"
        assert config.server.port == 4223
        assert config.kubernetes == KubernetesConfig(
            kubeconfig=None,
            audience="sts.min.io",
            resync_seconds=30.0,
            timeout_seconds=10.0,
        )
        assert config.tenants == TenantsConfig(
            endpoint=None,
            cluster_domain="cluster.local",
            ca_file=None,
            timeout_seconds=10.0,
        )
        assert config.sts == STSConfig(
            default_duration_seconds=3600, max_duration_seconds=43200
        )

    def test_server_tls_paths_have_no_default(self) -> None:
        with pytest.raises(TypeError):
            ServerConfig()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            Config()  # type: ignore[call-arg]

    @cases(
        "record",
        [
            ServerConfig(tls_cert="c", tls_key="k"),
            KubernetesConfig(),
            TenantsConfig(),
            STSConfig(),
            Config(server=ServerConfig(tls_cert="c", tls_key="k")),
        ],
    )
    def test_frozen(self, record: object) -> None:
        for f in dataclasses.fields(record):  # type: ignore[arg-type]
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(record, f.name, getattr(record, f.name))

    def test_sections_may_be_empty(self) -> None:
        """``kubernetes:`` with every key commented out is YAML null: all defaults."""
        minimal = minimal_config(shared_pki())
        data = dict(minimal, kubernetes=None, tenants={}, sts=None)
        assert parse_config(data) == parse_config(minimal)

    def test_every_value_is_set(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        data = {
            "server": {
                "interface": "::",
                "port": 1,
                "tls_cert": pki.chain,
                "tls_key": pki.key,
            },
            "kubernetes": {
                "kubeconfig": pki.cert,
                "audience": "minio",
                "resync_seconds": 0.5,
                "timeout_seconds": 3,
            },
            "tenants": {
                "endpoint": "https://minio.{namespace}.svc:443",
                "cluster_domain": "example.internal",
                "ca_file": pki.chain,
                "timeout_seconds": 2.5,
            },
            "sts": {"default_duration_seconds": 900, "max_duration_seconds": 900},
        }
        config = parse_config(data)
        assert config == Config(
            server=ServerConfig(
                interface="::", port=1, tls_cert=pki.chain, tls_key=pki.key
            ),
            kubernetes=KubernetesConfig(
                kubeconfig=pki.cert,
                audience="minio",
                resync_seconds=0.5,
                timeout_seconds=3.0,
            ),
            tenants=TenantsConfig(
                endpoint="https://minio.{namespace}.svc:443",
                cluster_domain="example.internal",
                ca_file=pki.chain,
                timeout_seconds=2.5,
            ),
            sts=STSConfig(default_duration_seconds=900, max_duration_seconds=900),
        )
        assert type(config.kubernetes.timeout_seconds) is float

    def test_top_level_must_be_a_mapping(self) -> None:
        assert _error(["server"]) == "top level: expected a mapping of sections, got list"
        assert _error(None) == "top level: expected a mapping of sections, got NoneType"

    def test_unknown_section(self) -> None:
        minimal = minimal_config(shared_pki())
        known = ", ".join(sorted(f.name for f in dataclasses.fields(Config)))
        assert known == "kubernetes, limits, metrics, server, sts, tenants"
        assert (
            _error(dict(minimal, metricz={"port": 9090}))
            == f"metricz: unknown section (known: {known})"
        )

    def test_unknown_key(self) -> None:
        minimal = minimal_config(shared_pki())
        known = ", ".join(sorted(f.name for f in dataclasses.fields(KubernetesConfig)))
        assert "audience, kubeconfig, resync_seconds, timeout_seconds" in known
        assert _error(_with(minimal, "kubernetes", "resyncseconds", 5)) == (
            f"kubernetes.resyncseconds: unknown key (known: {known})"
        )

    def test_unknown_key_is_reported_before_a_missing_one(self) -> None:
        """A typo'd required key says "unknown", which points at the typo."""
        pki = shared_pki()
        message = _error({"server": {"tls_crt": pki.cert, "tls_key": pki.key}})
        assert message.startswith("server.tls_crt: unknown key (known: ")

    def test_section_must_be_a_mapping(self) -> None:
        minimal = minimal_config(shared_pki())
        assert (
            _error(dict(minimal, kubernetes=["audience"]))
            == "kubernetes: expected a mapping of keys, got list"
        )

    @cases("key", ["tls_cert", "tls_key"])
    def test_tls_files_are_required(self, key: str) -> None:
        minimal = minimal_config(shared_pki())
        del minimal["server"][key]
        assert _error(minimal) == f"server.{key}: required key is missing"

    def test_server_section_is_required(self) -> None:
        assert _error({}) == "server.tls_cert: required key is missing"

    @cases(
        "section,key", [(s, k) for s, k, _ in _schema()], ids=lambda v: str(v)
    )
    def test_every_key_rejects_a_wrong_type(self, section: str, key: str
    ) -> None:
        """Every key of the schema is validated, including keys added later."""
        minimal = minimal_config(shared_pki())
        message = _error(_with(minimal, section, key, ["a", "list"]))
        assert message.startswith(f"{section}.{key}: ")

    @cases("port", [1, 443, 4223, 65535])
    def test_port_accepted(self, port: int) -> None:
        minimal = minimal_config(shared_pki())
        assert parse_config(_with(minimal, "server", "port", port)).server.port == port

    @cases(
        "port", [0, -1, 65536, 10**10, "abc", "4223", 4223.0, True, False, None]
    )
    def test_port_rejected(self, port: object) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "server", "port", port)) == (
            f"server.port: expected an integer between 1 and 65535, got {port!r}"
        )

    def test_port_message_example(self) -> None:
        minimal = minimal_config(shared_pki())
        assert (
            _error(_with(minimal, "server", "port", "abc"))
            == "server.port: expected an integer between 1 and 65535, got 'abc'"
        )

    @given(st.integers(min_value=-(2**20), max_value=2**20))
    def test_port_range_property(self, port: int) -> None:
        data = {"server": {"port": port, "tls_cert": "unused", "tls_key": "unused"}}
        try:
            parse_config(data)
        except ConfigError as e:
            # The port is checked before the (here missing) files.
            assert (e.key == "server.port") == (not 1 <= port <= 65535)
        else:  # pragma: no cover - the files never exist
            raise AssertionError("missing TLS files accepted")

    @cases("key", ["interface", "audience", "cluster_domain"])
    @cases("value", ["", "   ", None, 5, True])
    def test_strings_must_be_non_empty(self, key: str, value: object
    ) -> None:
        minimal = minimal_config(shared_pki())
        section = {
            "interface": "server",
            "audience": "kubernetes",
            "cluster_domain": "tenants",
        }[key]
        assert _error(_with(minimal, section, key, value)) == (
            f"{section}.{key}: expected a non-empty string, got {value!r}"
        )

    def test_long_values_are_shortened_in_messages(self) -> None:
        minimal = minimal_config(shared_pki())
        message = _error(_with(minimal, "server", "port", "x" * 10_000))
        assert message.startswith(
            "server.port: expected an integer between 1 and 65535, got 'xxx"
        )
        assert message.endswith("...")
        assert len(message) < 150

    def test_yaml_yes_is_not_a_port(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(
            f"server:\n  port: yes\n  tls_cert: {pki.cert}\n  tls_key: {pki.key}\n"
        )
        with pytest.raises(ConfigError) as info:
            load_config(str(path))
        assert (
            str(info.value)
            == "server.port: expected an integer between 1 and 65535, got True"
        )
        assert info.value.key == "server.port"

    @cases("section,key", SECONDS)
    @cases("value", [0.001, 1, 10.5, 86400])
    def test_seconds_accepted(self, section: str, key: str, value: float
    ) -> None:
        minimal = minimal_config(shared_pki())
        config = parse_config(_with(minimal, section, key, value))
        stored = getattr(getattr(config, section), key)
        assert stored == value
        assert type(stored) is float

    @cases("section,key", SECONDS)
    @cases(
        "value", [0, 0.0, -1, -0.5, math.inf, -math.inf, math.nan, True, "10", "10s", None]
    )
    def test_seconds_rejected(self, section: str, key: str, value: object
    ) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, section, key, value)) == (
            f"{section}.{key}: must be a positive number of seconds, got {value!r}"
        )

    def test_seconds_message_example(self) -> None:
        minimal = minimal_config(shared_pki())
        assert (
            _error(_with(minimal, "kubernetes", "timeout_seconds", -1))
            == "kubernetes.timeout_seconds: must be a positive number of seconds, got -1"
        )

    def test_yaml_infinity_is_rejected(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(
            f"server: {{tls_cert: {pki.cert}, tls_key: {pki.key}}}\n"
        "kubernetes: {resync_seconds: .inf}\n"
        )
        with pytest.raises(
            ConfigError, match=r"^kubernetes\.resync_seconds: must be a positive"
        ):
            load_config(str(path))

    @cases(
        "default,maximum",
        [(900, 900), (900, 43200), (3600, 3600), (43200, 43200), (1000, 7200)],
    )
    def test_durations_accepted(self, default: int, maximum: int
    ) -> None:
        minimal = minimal_config(shared_pki())
        data = dict(
            minimal,
            sts={"default_duration_seconds": default, "max_duration_seconds": maximum},
        )
        assert parse_config(data).sts == STSConfig(
            default_duration_seconds=default, max_duration_seconds=maximum
        )

    @cases(
        "value", [899, 0, -900, 43201, 604800, 3600.0, True, "3600", None]
    )
    def test_max_duration_rejected(self, value: object) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "sts", "max_duration_seconds", value)) == (
            "sts.max_duration_seconds: expected an integer between 900 and 43200 "
        f"(MinIO's AssumeRole limit), got {value!r}"
        )

    @cases("value", [899, 43201, 3600.5, False])
    def test_default_duration_rejected(self, value: object) -> None:
        minimal = minimal_config(shared_pki())
        message = _error(_with(minimal, "sts", "default_duration_seconds", value))
        assert message.startswith(
            "sts.default_duration_seconds: expected an integer between 900"
        )
        assert message.endswith(f"got {value!r}")

    def test_default_duration_above_max(self) -> None:
        minimal = minimal_config(shared_pki())
        data = dict(
            minimal, sts={"default_duration_seconds": 7201, "max_duration_seconds": 7200}
        )
        assert _error(data) == (
            "sts.default_duration_seconds: expected an integer between 900 and "
        "sts.max_duration_seconds (7200), got 7201"
        )

    def test_default_duration_default_above_configured_max(self) -> None:
        """Lowering the maximum below 3600 requires lowering the default too."""
        minimal = minimal_config(shared_pki())
        message = _error(_with(minimal, "sts", "max_duration_seconds", 1800))
        assert message.startswith("sts.default_duration_seconds: ")

    def test_certificate_chain_is_accepted(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        data = _with(minimal, "server", "tls_cert", pki.chain)
        assert parse_config(data).server.tls_cert == pki.chain

    @cases("key", ["tls_cert", "tls_key"])
    def test_tls_file_missing(self, key: str) -> None:
        tmp_path = temporary_directory(self)
        minimal = minimal_config(shared_pki())
        missing = str(tmp_path / "nope.pem")
        assert _error(_with(minimal, "server", key, missing)) == (
            f"server.{key}: cannot read {missing} (No such file or directory)"
        )

    @cases("key", ["tls_cert", "tls_key"])
    def test_tls_file_is_a_directory(self, key: str
    ) -> None:
        tmp_path = temporary_directory(self)
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "server", key, str(tmp_path))) == (
            f"server.{key}: cannot read {tmp_path} (Is a directory)"
        )

    def test_tls_file_unreadable(self) -> None:
        if os.geteuid() == 0:
            raise SkipTest("root reads any file")
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        path = tmp_path / "tls.key"
        path.write_bytes(Path(pki.key).read_bytes())
        path.chmod(0)
        assert _error(_with(minimal, "server", "tls_key", str(path))) == (
            f"server.tls_key: cannot read {path} (Permission denied)"
        )

    @cases("key", ["tls_cert", "tls_key"])
    @cases("value", ["", None, 42])
    def test_tls_path_must_be_a_string(self, key: str, value: object
    ) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "server", key, value)) == (
            f"server.{key}: expected a file path, got {value!r}"
        )

    def test_tls_cert_without_certificate(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "server", "tls_cert", pki.key)) == (
            f"server.tls_cert: no PEM certificate found ({pki.key})"
        )

    def test_tls_cert_empty(self) -> None:
        tmp_path = temporary_directory(self)
        minimal = minimal_config(shared_pki())
        empty = tmp_path / "empty.crt"
        empty.write_bytes(b"")
        assert _error(_with(minimal, "server", "tls_cert", str(empty))) == (
            f"server.tls_cert: no PEM certificate found ({empty})"
        )

    def test_tls_key_not_a_key(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "server", "tls_key", pki.cert)) == (
            f"server.tls_key: not a PEM private key ({pki.cert})"
        )
        assert _error(_with(minimal, "server", "tls_key", pki.secret_garbage)) == (
            f"server.tls_key: not a PEM private key ({pki.secret_garbage})"
        )

    def test_tls_key_encrypted(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "server", "tls_key", pki.encrypted_key)) == (
            f"server.tls_key: encrypted private keys are not supported ({pki.encrypted_key})"
        )

    def test_tls_key_does_not_match(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        assert (
            _error(_with(minimal, "server", "tls_key", pki.other_key))
            == "server.tls_key: does not match server.tls_cert"
        )

    def test_tls_key_must_match_the_leaf_not_any_chain_certificate(self) -> None:
        """The chain's second certificate belongs to other_key; only the first counts."""
        pki = shared_pki()
        data = {"server": {"tls_cert": pki.chain, "tls_key": pki.other_key}}
        assert _error(data) == "server.tls_key: does not match server.tls_cert"

    def test_kubeconfig_is_only_checked_for_readability(self
    ) -> None:
        tmp_path = temporary_directory(self)
        minimal = minimal_config(shared_pki())
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text("parsed: later, by the kubernetes loader\n")
        data = _with(minimal, "kubernetes", "kubeconfig", str(kubeconfig))
        assert parse_config(data).kubernetes.kubeconfig == str(kubeconfig)

    def test_kubeconfig_missing(self) -> None:
        tmp_path = temporary_directory(self)
        minimal = minimal_config(shared_pki())
        missing = tmp_path / "kubeconfig"
        assert _error(_with(minimal, "kubernetes", "kubeconfig", str(missing))) == (
            f"kubernetes.kubeconfig: cannot read {missing} (No such file or directory)"
        )
        assert _error(_with(minimal, "kubernetes", "kubeconfig", str(tmp_path))).startswith(
            "kubernetes.kubeconfig: cannot read"
        )

    def test_ca_file(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        assert (
            parse_config(_with(minimal, "tenants", "ca_file", None)).tenants.ca_file is None
        )
        assert parse_config(
            _with(minimal, "tenants", "ca_file", pki.chain)
        ).tenants.ca_file == (pki.chain)
        assert _error(_with(minimal, "tenants", "ca_file", pki.key)) == (
            f"tenants.ca_file: no PEM certificate found ({pki.key})"
        )
        missing = tmp_path / "ca.crt"
        assert _error(_with(minimal, "tenants", "ca_file", str(missing))) == (
            f"tenants.ca_file: cannot read {missing} (No such file or directory)"
        )

    @cases(
        "endpoint",
        [
            None,
            "https://minio.{namespace}.svc.cluster.local:443",
            "https://{tenant}-hl.{namespace}.svc:9000",
            "http://minio.{namespace}.svc:80",
            "https://minio.example.com",
            "https://[::1]:9000",
        ],
    )
    def test_endpoint_accepted(self, endpoint: str | None) -> None:
        minimal = minimal_config(shared_pki())
        assert parse_config(
            _with(minimal, "tenants", "endpoint", endpoint)
        ).tenants.endpoint == (endpoint)

    @cases(
        "endpoint",
        ["ftp://minio", "minio.{namespace}.svc", "HTTPS://minio", "", 443, ["https://x"]],
    )
    def test_endpoint_scheme(self, endpoint: object) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "tenants", "endpoint", endpoint)) == (
            f"tenants.endpoint: expected an https:// or http:// URL, got {endpoint!r}"
        )

    @cases(
        "endpoint,shown",
        [
            ("https://{name}.{namespace}.svc", "{name}"),
            ("https://minio.{ns}.svc", "{ns}"),
            ("https://minio.{}.svc", "{}"),
            ("https://minio.{0}.svc", "{0}"),
            ("https://minio.{namespace.upper}.svc", "{namespace.upper}"),
            ("https://minio.{namespace[0]}.svc", "{namespace[0]}"),
            ("https://minio.{namespace!r}.svc", "{namespace!r}"),
            ("https://minio.{namespace:>20}.svc", "{namespace:>20}"),
        ],
    )
    def test_endpoint_unknown_placeholder(self, endpoint: str, shown: str
    ) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "tenants", "endpoint", endpoint)) == (
            f"tenants.endpoint: unknown placeholder {shown} (allowed: {{namespace}}, {{tenant}})"
        )

    @cases(
        "endpoint", ["https://minio.{namespace.svc", "https://minio.}.svc"]
    )
    def test_endpoint_malformed_template(self, endpoint: str) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "tenants", "endpoint", endpoint)).startswith(
            "tenants.endpoint: malformed template ("
        )

    @cases("endpoint", ["https://", "http:///path", "https://:9000"])
    def test_endpoint_needs_a_host(self, endpoint: str) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, "tenants", "endpoint", endpoint)) == (
            f"tenants.endpoint: URL has no host, got {endpoint!r}"
        )

    def test_relative_paths_resolved_against_base_dir(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        _copy_pki(pki, tmp_path / "tls")
        (tmp_path / "kubeconfig").write_text("{}")
        data = {
            "server": {"tls_cert": "tls/tls.crt", "tls_key": "tls/tls.key"},
            "kubernetes": {"kubeconfig": "kubeconfig"},
            "tenants": {"ca_file": "tls/tls.crt"},
        }
        config = parse_config(data, base_dir=str(tmp_path))
        assert config.server.tls_cert == str(tmp_path / "tls" / "tls.crt")
        assert config.server.tls_key == str(tmp_path / "tls" / "tls.key")
        assert config.kubernetes.kubeconfig == str(tmp_path / "kubeconfig")
        assert config.tenants.ca_file == str(tmp_path / "tls" / "tls.crt")

    def test_absolute_paths_are_kept(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        data = {"server": {"tls_cert": pki.cert, "tls_key": pki.key}}
        assert parse_config(data, base_dir=str(tmp_path)).server.tls_cert == pki.cert

    def test_relative_paths_without_base_dir_are_kept(self
    ) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        _copy_pki(pki, tmp_path)
        monkeypatch.chdir(tmp_path)
        config = parse_config({"server": {"tls_cert": "tls.crt", "tls_key": "tls.key"}})
        assert config.server == ServerConfig(tls_cert="tls.crt", tls_key="tls.key")

    def test_load_config_resolves_against_the_config_directory(self
    ) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        confdir = tmp_path / "etc" / "stsd"
        _copy_pki(pki, confdir / "tls")
        (confdir / "stsd.yaml").write_text(
            "server:\n  tls_cert: tls/tls.crt\n  tls_key: ./tls/tls.key\n"
        )
        monkeypatch.chdir(tmp_path)  # a relative config path, too
        config = load_config(os.path.join("etc", "stsd", "stsd.yaml"))
        assert config.server.tls_cert == str(confdir / "tls" / "tls.crt")
        assert os.path.normpath(config.server.tls_key) == str(confdir / "tls" / "tls.key")

    def test_relative_path_error_names_the_resolved_path(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        data = {"server": {"tls_cert": "missing.crt", "tls_key": pki.key}}
        assert _error(data, base_dir=str(tmp_path)) == (
            f"server.tls_cert: cannot read {tmp_path / 'missing.crt'} (No such file or directory)"
        )

    def test_load_config(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(
            f"server:\n  port: 8443\n  tls_cert: {pki.cert}\n  tls_key: {pki.key}\n"
        "sts:\n  max_duration_seconds: 7200\n"
        )
        config = load_config(str(path))
        assert config.server.port == 8443
        assert config.sts == STSConfig(
            default_duration_seconds=3600, max_duration_seconds=7200
        )

    def test_load_config_missing_file(self) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        assert (
            _load_error(path)
            == f"{path}: cannot read config file (No such file or directory)"
        )

    def test_load_config_directory(self) -> None:
        tmp_path = temporary_directory(self)
        assert (
            _load_error(tmp_path) == f"{tmp_path}: cannot read config file (Is a directory)"
        )

    def test_load_config_not_yaml(self) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_text("server:\n  port: [4223\n")
        assert re.fullmatch(
            rf"{re.escape(str(path))}: not valid YAML \(line \d+, column \d+: .+\)",
            _load_error(path),
        )

    def test_load_config_control_characters(self) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_bytes(b"server:\n  interface: \x01\n")
        assert _load_error(path) == (
            f"{path}: not valid YAML (special characters are not allowed at offset 21)"
        )

    def test_load_config_not_utf8(self) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_bytes(b"server:\n  interface: \xff\xfe\x00\n")
        assert (
            _load_error(path) == f"{path}: not valid YAML (invalid start byte at offset 21)"
        )

    @cases(
        "text,kind",
        [("- server\n- sts\n", "list"), ("just a string\n", "str"), ("42\n", "int")],
    )
    def test_load_config_top_level_not_a_mapping(self, text: str, kind: str
    ) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_text(text)
        assert _load_error(path) == (
            f"{path}: expected a mapping of sections at the top level, got {kind}"
        )

    @cases("text", ["", "# only comments\n", "---\n"])
    def test_load_config_empty(self, text: str) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_text(text)
        assert _load_error(path) == (
            f"{path}: empty config file (server.tls_cert and server.tls_key are required)"
        )

    def test_load_config_duplicate_key(self) -> None:
        """``yaml.safe_load`` would silently keep the last ``port``."""
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(
            f"server:\n  port: 4223\n  tls_cert: {pki.cert}\n  tls_key: {pki.key}\n  port: 443\n"
        )
        assert (
            _load_error(path)
            == f"{path}: not valid YAML (line 5, column 3: duplicate key 'port')"
        )

    def test_load_config_duplicate_section(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(
            f"server:\n  tls_cert: {pki.cert}\n  tls_key: {pki.key}\nsts: {{}}\nsts: {{}}\n"
        )
        assert _load_error(path).endswith("duplicate key 'sts')")

    def test_load_config_merge_keys_are_not_duplicates(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(
            f"server:\n  tls_cert: {pki.cert}\n  tls_key: {pki.key}\n"
        "kubernetes: &k {timeout_seconds: 5, resync_seconds: 5}\n"
        "tenants:\n  <<: {timeout_seconds: 5}\n  timeout_seconds: 7\n"
        )
        assert load_config(str(path)).tenants.timeout_seconds == 7.0

    def test_load_config_uses_safe_yaml(self) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_text("server: !!python/object/apply:os.system ['true']\n")
        assert _load_error(path).startswith(f"{path}: not valid YAML (")

    def test_bad_key_file_contents_not_in_message(self
    ) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        message = _error(_with(minimal, "server", "tls_key", pki.secret_garbage))
        assert SECRET_MARKER not in message
        assert "PRIVATE KEY-----" not in message

    def test_key_file_given_as_certificate_not_in_message(self
    ) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        message = _error(_with(minimal, "server", "tls_cert", pki.key))
        assert not any(line in message for line in pki.key_body_lines)

    def test_key_file_given_as_config_not_in_message(self) -> None:
        """``--config`` pointed at the key by mistake: YAML reads the PEM as one string."""
        pki = shared_pki()
        message = _load_error(pki.key)
        assert not any(line in message for line in pki.key_body_lines)
        assert "BEGIN" not in message
        assert not any(line in _load_error(pki.secret_garbage) for line in [SECRET_MARKER])

    def test_yaml_syntax_error_does_not_quote_the_file(self) -> None:
        tmp_path = temporary_directory(self)
        path = tmp_path / "stsd.yaml"
        path.write_text(f"server:\n  tls_key: {SECRET_MARKER}: [\n")
        message = _load_error(path)
        assert message.startswith(f"{path}: not valid YAML (line ")
        assert SECRET_MARKER not in message

    def test_config_error_fields(self) -> None:
        error = ConfigError("server.port", "expected an integer")
        assert error.key == "server.port"
        assert error.problem == "expected an integer"
        assert str(error) == "server.port: expected an integer"
        assert str(ConfigError("a\nb", "c\r\nd")) == "a\\nb: c\\r\\nd"

    def test_redacted(self) -> None:
        pki = shared_pki()
        minimal = minimal_config(shared_pki())
        config = parse_config(
            _with(minimal, "tenants", "endpoint", "https://{tenant}.{namespace}")
        )
        plain = redacted(config)
        assert plain == dataclasses.asdict(config)  # no key is secret today
        assert list(plain) == [f.name for f in dataclasses.fields(Config)]
        assert plain["server"]["tls_key"] == pki.key  # a path, not key material
        assert json.loads(json.dumps(plain)) == plain

    def test_example_config_loads_and_shows_the_defaults(self) -> None:
        tmp_path = temporary_directory(self)
        pki = shared_pki()
        path = tmp_path / "stsd.yaml"
        path.write_text(_example_text(pki))
        assert load_config(str(path)) == Config(
            server=ServerConfig(tls_cert=pki.cert, tls_key=pki.key)
        )

    def test_example_config_sets_every_key_in_schema_order(self) -> None:
        data = yaml.safe_load(EXAMPLE.read_text())
        assert list(data) == [f.name for f in dataclasses.fields(Config)]
        for section in data:
            expected = [key for s, key, _ in _schema() if s == section]
            assert list(data[section]) == expected, section

    def test_example_config_comments_every_key(self) -> None:
        """Each key has a comment on its own line or the line above."""
        lines = EXAMPLE.read_text().splitlines()
        found = set()
        section = None
        for number, line in enumerate(lines):
            if m := re.match(r"^(\w+):", line):
                section = m.group(1)
            elif m := re.match(r"^  (\w+):", line):
                above = lines[number - 1].strip()
                assert "#" in line or above.startswith("#"), (
                    f"{section}.{m.group(1)}: no comment"
                )
                found.add((section, m.group(1)))
        assert found == {(s, k) for s, k, _ in _schema()}

    def test_plugin_module_has_no_side_effects(self) -> None:
        """
        Twisted imports every plugin module while scanning; errors there are swallowed
        ("Unknown command"), so the module does nothing but build a ServiceMaker.
        """
        tree = ast.parse(PLUGIN.read_text())
        assert len(tree.body) == 2
        imports, assign = tree.body
        assert isinstance(imports, ast.ImportFrom)
        assert imports.module == "twisted.application.service"
        assert [alias.name for alias in imports.names] == ["ServiceMaker"]
        assert [alias.asname for alias in imports.names] == [None]
        assert isinstance(assign, ast.Assign)
        assert [ast.unparse(t) for t in assign.targets] == ["stsd"]
        call = assign.value
        assert isinstance(call, ast.Call) and ast.unparse(call.func) == "ServiceMaker"
        assert not call.keywords
        assert [ast.literal_eval(arg) for arg in call.args] == [
            "stsd",
            "stsd.tap",
            "Security Token Service for MinIO tenants on Kubernetes",
            "stsd",
        ]

    def test_plugin_package_has_no_init(self) -> None:
        assert not (ROOT / "twisted" / "__init__.py").exists()
        assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()

    @cases("section, key, value, message", [
        ("kubernetes", "token_verification", "oidc",
         "kubernetes.token_verification: expected one of tokenreview, jwks, got 'oidc'"),
        ("kubernetes", "token_cache_seconds", 11,
         "kubernetes.token_cache_seconds: expected a number of seconds between 0 and 10, got 11"),
        ("kubernetes", "token_cache_seconds", -1,
         "kubernetes.token_cache_seconds: expected a number of seconds between 0 and 10, got -1"),
        ("sts", "reuse_seconds", True,
         "sts.reuse_seconds: expected a number of seconds between 0 and 3600, got True"),
        ("limits", "per_serviceaccount", {"rate": 5},
         "limits.per_serviceaccount: expected {rate: N, burst: N}, got {'rate': 5}"),
        ("limits", "per_serviceaccount", {"rate": 0, "burst": 5},
         "limits.per_serviceaccount.rate: must be a positive number of seconds, got 0"),
        ("limits", "failed_auth_per_client", {"rate": 1, "burst": 0},
         "limits.failed_auth_per_client.burst: expected an integer between 1 and 1000000000, got 0"),
        ("metrics", "port", 0, "metrics.port: expected an integer between 1 and 65535, got 0"),
        ("server", "request_timeout_seconds", 0,
         "server.request_timeout_seconds: must be a positive number of seconds, got 0"),
    ])
    def test_later_keys_validated(self, section: str, key: str, value: object,
                                  message: str) -> None:
        minimal = minimal_config(shared_pki())
        assert _error(_with(minimal, section, key, value)) == message

    def test_later_keys_parsed(self) -> None:
        minimal = minimal_config(shared_pki())
        data = _with(minimal, "limits", "per_serviceaccount", {"rate": 2.5, "burst": 7})
        data = _with(data, "kubernetes", "token_verification", "jwks")
        data = _with(data, "kubernetes", "token_cache_seconds", 0)
        config = parse_config(data)
        assert config.limits.per_serviceaccount.rate == 2.5
        assert config.limits.per_serviceaccount.burst == 7
        assert config.kubernetes.token_verification == "jwks"
        assert config.kubernetes.token_cache_seconds == 0.0
        assert redacted(config)["limits"]["per_serviceaccount"] == {"rate": 2.5, "burst": 7}
