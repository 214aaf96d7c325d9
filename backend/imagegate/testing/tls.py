"""A throwaway certificate authority (trustme) so that emulators speak real TLS on loopback."""

from __future__ import annotations

import ssl
import tempfile
from functools import cached_property
from pathlib import Path

import trustme

__all__ = ["LocalCA"]


class LocalCA:
    """A CA that issues a certificate for 127.0.0.1/localhost; clients trust ``ca_file``."""

    def __init__(self, directory: Path | str | None = None) -> None:
        self._ca = trustme.CA()
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        self._dir = Path(directory or tempfile.mkdtemp(prefix="imagegate-ca-"))

    @cached_property
    def ca_file(self) -> Path:
        """PEM file of the CA: use as a backend's ``ca_bundle`` or as ``SSL_CERT_FILE``."""
        path = self._dir / "imagegate-test-ca.pem"
        self._ca.cert_pem.write_to_path(str(path))
        return path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx
