"""Secrets come from the environment (or Airflow connections), never from code or conf/."""

from __future__ import annotations

import os
import secrets

from p13n.config import Settings

PII_KEY_VAR = "P13N_PII_KEY"


def pii_key(settings: Settings) -> bytes:
    """The HMAC key that pseudonymizes PII outside the restricted tables.

    Production must set P13N_PII_KEY. Locally, a random key is made once and kept (mode 0600) in the
    data directory, so local pseudonyms are stable across runs and no key is ever in the code.
    """
    value = os.environ.get(PII_KEY_VAR)
    if value:
        return value.encode()
    if settings.env == "prod":
        raise RuntimeError(f"{PII_KEY_VAR} is not set: production needs the PII pseudonymization key")
    return local_secret(settings, "pii.key").encode()


def local_secret(settings: Settings, name: str) -> str:
    """A random secret made once and kept owner-only in <data_dir>/secrets/<name> (never in conf/ or code)."""
    path = settings.data_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()
