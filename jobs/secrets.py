"""Secrets come from the environment (or Airflow connections), never from code or conf/."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from p13n.config import Settings

PII_KEY_VAR = "P13N_PII_KEY"


def pii_key(settings: Settings) -> bytes:
    """The HMAC key that pseudonymizes PII outside the restricted tables.

    Production must set P13N_PII_KEY. Locally, a random key is made once and kept (mode 0600) in the
    data directory, so local pseudonyms are stable across runs and no key is ever in the code.
    """
    value = os.environ.get(PII_KEY_VAR)
    if value:
        if settings.env == "prod":
            check_production_secret(PII_KEY_VAR, value)
        return value.encode()
    if settings.env == "prod":
        raise RuntimeError(f"{PII_KEY_VAR} is not set: production needs the PII pseudonymization key")
    return local_secret(settings, "pii.key").encode()


_PLACEHOLDER = ("change-me", "changeme", "placeholder", "example", "xxxxxx", "secret", "password")


def check_production_secret(name: str, value: str) -> None:
    """Production refuses a placeholder or short secret (the examples in docker/.env.example)."""
    low = value.lower()
    if any(p in low for p in _PLACEHOLDER) or len(value) < 16:
        raise RuntimeError(
            f"{name} is a placeholder or shorter than 16 characters: production needs a real secret "
            f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )


def local_secret(settings: Settings, name: str) -> str:
    """A random secret made once and kept owner-only in <data_dir>/secrets/<name> (never in conf/ or code)."""
    path = settings.data_dir / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


RESTRICTED_LAYERS = ("restricted", "bronze", "quarantine")


def restricted_paths(settings: Settings) -> list[Path]:
    """The local folders that hold raw personal data or secrets: the lake's restricted zones, the
    landing zone, the generator's ground truth, the local warehouse, exports, access-request files,
    the secrets, and Airflow's home (its metadata database and admin password)."""
    root = settings.lake_root
    lake = [] if "://" in root and not root.startswith("file://") else [Path(root.removeprefix("file://"))]
    return [
        *(lake[0] / layer for layer in RESTRICTED_LAYERS if lake),
        settings.landing_dir,
        settings.data_dir / "truth",
        settings.snowflake_db_path,
        settings.data_dir / "exports",
        settings.data_dir / "privacy",
        settings.data_dir / "secrets",
        settings.airflow_home,
    ]


def secure_zones(settings: Settings) -> None:
    """Each restricted folder owner-only (0700): nothing inside is readable by another user, whatever
    the mode its writer (Spark, delta-rs, Airflow) gave a file. Made if missing, so the first file
    written there is already closed to others."""
    for path in restricted_paths(settings):
        try:
            path.mkdir(parents=True, exist_ok=True)
            if path.stat().st_mode & 0o077:
                path.chmod(0o700)
        except OSError:
            pass  # a folder we do not own (a shared mount): its owner secures it
