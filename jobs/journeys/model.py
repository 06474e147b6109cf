"""Journeys as code: `conf/journeys.yaml`, read and checked once (pydantic), like the source catalog."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from p13n.config import REPO_ROOT

END = "end"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Branch(_Strict):
    if_: str = Field(alias="if", min_length=1)
    then: str
    else_: str = Field(alias="else")


class Step(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    send: Literal["email", "sms", "push"] | None = None
    template: str | None = None
    wait_days: int | None = Field(None, gt=0)
    wait_for: Literal["order"] | None = None
    timeout_days: int | None = Field(None, gt=0)
    timeout: str | None = None
    branch: Branch | None = None
    then: str | None = None

    @property
    def kind(self) -> str:
        return next(k for k in ("send", "wait_days", "wait_for", "branch") if getattr(self, k) is not None)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("send", "wait_days", "wait_for", "branch") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"step {self.id}: exactly one of send, wait_days, wait_for, branch (got {kinds or 'none'})"
            )
        if self.send and not self.template:
            raise ValueError(f"step {self.id}: a send needs a template")
        if self.wait_for and not (self.timeout_days and self.then and self.timeout):
            raise ValueError(f"step {self.id}: wait_for needs timeout_days, then and timeout")
        return self


class Entry(_Strict):
    lifecycle_stage: list[str] = Field(default_factory=list)
    trigger: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one(self) -> Entry:
        if bool(self.lifecycle_stage) == bool(self.trigger):
            raise ValueError("entry: exactly one of lifecycle_stage or trigger")
        return self


class Journey(_Strict):
    name: str
    description: str = ""
    entry: Entry
    holdout: float = Field(0.0, ge=0, lt=1)
    reentry_days: int | None = Field(None, gt=0)
    exit_on_conversion: bool = True
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _targets(self) -> Journey:
        ids = [s.id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"journey {self.name}: step ids must be unique ({ids})")
        known = {*ids, END}
        for s in self.steps:
            targets = [s.then, s.timeout] + ([s.branch.then, s.branch.else_] if s.branch else [])
            bad = [t for t in targets if t is not None and t not in known]
            if bad:
                raise ValueError(
                    f"journey {self.name}, step {s.id}: no step {bad[0]!r} (steps: {', '.join(ids)}, end)"
                )
        return self

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def after(self, step: Step) -> str:
        """The step that follows `step` when it names none: the next one, or the end."""
        if step.then and step.kind != "wait_for":
            return step.then
        i = self.steps.index(step)
        return self.steps[i + 1].id if i + 1 < len(self.steps) else END


class JourneyError(ValueError):
    """A journey file that does not parse or check; the message names the journey and the reason."""


def journeys_file() -> Path:
    """conf/journeys.yaml (of `P13N_CONF_DIR` when set, as the settings)."""
    import os

    return Path(os.environ.get("P13N_CONF_DIR") or REPO_ROOT / "conf") / "journeys.yaml"


def load(path: Path | None = None) -> dict[str, Journey]:
    path = path or journeys_file()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise JourneyError(f"{path}: {e}") from None
    out = {}
    for name, body in (raw.get("journeys") or {}).items():
        try:
            out[name] = Journey(name=name, **(body or {}))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            raise JourneyError(f"{path.name}: journey {name}: {where + ': ' if where else ''}{msg}") from None
    return out


@lru_cache(maxsize=1)
def journeys() -> dict[str, Journey]:
    """The journeys of conf/journeys.yaml."""
    return load()
