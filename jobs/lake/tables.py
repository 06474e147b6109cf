"""Table names are layered: `bronze.*`, `silver.*`, `gold.*`, `quarantine.*`, `restricted.*` (raw PII, access-controlled) and `ops.*` (run records)."""

from __future__ import annotations

import re
from dataclasses import dataclass

LAYERS = ("bronze", "silver", "gold", "quarantine", "restricted", "ops")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class TableName:
    layer: str
    name: str

    @classmethod
    def parse(cls, qualified: str) -> TableName:
        layer, dot, name = qualified.partition(".")
        if not dot or layer not in LAYERS or not _NAME.match(name):
            raise ValueError(
                f"table name {qualified!r} must be <layer>.<name> with layer one of {', '.join(LAYERS)} "
                "and a lower-case snake_case name"
            )
        return cls(layer, name)

    def uri(self, root: str) -> str:
        return f"{root.rstrip('/')}/{self.layer}/{self.name}"

    def __str__(self) -> str:
        return f"{self.layer}.{self.name}"
