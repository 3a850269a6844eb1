"""The JSON Schema of the plan file (`policyd schema plan`), from pydantic models.

The plan itself is written by hand-rolled streaming (plan.py) for speed; these models
describe the same shape so scripts and editors can validate a plan file, and a test
checks real plans against the schema, which keeps the two in step.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanAction(_Strict):
    id: str = Field(pattern=r"^a[0-9]+$")
    kind: Literal["copy", "verify", "delete", "expire", "acl", "workflow"]
    rule: str
    reason: str
    op: Literal["grant", "revoke"] | None = None
    experiment: str
    file: str | None = None
    source: str | None = None
    target: str | None = None
    path: str | None = None
    principal: str | None = Field(default=None, pattern=r"^(user|group):.+$")
    perms: list[Literal["read", "write"]] | None = None
    workflow: str | None = None
    args: dict[str, Any] | None = None
    bytes: int | None = Field(default=None, ge=0)
    after: list[str]


class PlanAlarm(_Strict):
    rule: str
    statement: int
    state: Literal["raise", "clear"]
    severity: Literal["info", "warning", "critical"]
    notify: list[str]
    value: str | None
    message: str


class PlanNotice(_Strict):
    rule: str
    experiment: str
    channel: str
    files: int
    bytes: int
    delete_after: str


class PlanBlocked(_Strict):
    rule: str
    experiment: str
    file: str
    target: str
    reason: str


class PlanErrorEntry(_Strict):
    rule: str
    experiment: str | None
    file: str | None
    message: str


class PlanSuspended(_Strict):
    kind: str
    rule: str | None
    experiment: str | None
    file: str | None
    target: str | None
    attempts: int
    error: str | None
    plan_id: str


class PlanSummary(_Strict):
    copy_: int = Field(alias="copy")
    verify: int
    delete: int
    expire: int
    acl: int
    workflow: int
    alarms: int
    notices: int
    blocked: int
    errors: int
    bytes_to_copy: int
    bytes_to_free: int
    over_max_delete: bool


class PlanFile(_Strict):
    version: Literal[1]
    site: str
    now: str
    catalog_fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    actions: list[PlanAction]
    alarms: list[PlanAlarm]
    notices: list[PlanNotice]
    blocked: list[PlanBlocked]
    errors: list[PlanErrorEntry]
    suspended: list[PlanSuspended] = []
    summary: PlanSummary


def plan_json_schema() -> dict[str, Any]:
    schema = PlanFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "policyd plan file"
    return schema
