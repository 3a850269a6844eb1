"""The JSON Schema of YAML rule files (`policyd schema rules`), from pydantic models.

Editors validate rule files against it as they are typed. The models describe the
YAML form of rules.md section 6 only; the YAML front end (grammar.yaml_rules) is what
reads the files, and a test keeps the two in agreement on every key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Expr = str | bool | int | float  # an expression of the rules language (DSL text, or a literal)
Duration = str  # "90 days", "1.5 h"
Percent = str  # "80%"
LocationName = str
Principal = str  # "experiment.users", "user:NAME", "group:NAME"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tier(Strict):
    tier: str = Field(description="every location of this tier")


class LocationsWhere(Strict):
    where: Expr = Field(description="locations whose location.name/.tier/.site match")


LocationSet = LocationName | list[LocationName] | Tier | LocationsWhere


class OrderBy(Strict):
    expr: Expr
    desc: bool = False


class NotifyBefore(Strict):
    channel: str
    before: Duration


class Place(Strict):
    where: Expr
    on: LocationName
    at: str = Field(description='layout template, e.g. "{station}/{experiment.name}/{file.path}"')


class Replicate(Strict):
    where: Expr
    copies: int = Field(ge=1)
    on: LocationSet


class Archive(Strict):
    where: Expr
    to: LocationName
    release_from: list[LocationName] | LocationName | None = None
    notify_before: NotifyBefore | None = None


class Release(Strict):
    where: Expr
    from_: list[LocationName] | LocationName = Field(alias="from")
    when: Expr | None = Field(None, description='a threshold: usage("LOC") > 90%')
    until: Percent | None = Field(None, description="the low mark, with when")
    order_by: OrderBy | Expr | None = None
    notify_before: NotifyBefore | None = None


class Expire(Strict):
    where: Expr
    notify_before: NotifyBefore | None = None


class Protect(Strict):
    where: Expr


class Alarm(Strict):
    when: Expr
    notify: list[str] | str
    clear_when: Expr | None = None
    severity: Literal["info", "warning", "critical"] | None = None
    for_: Duration | None = Field(None, alias="for")


class Grant(Strict):
    perms: list[Literal["read", "write"]] | Literal["read", "write"]
    principals: list[Principal] | Principal
    at: LocationName
    while_: Expr | None = Field(None, alias="while")


class Run(Strict):
    workflow: str
    where: Expr
    with_: dict[str, Expr] | None = Field(None, alias="with")


class Verify(Strict):
    on: LocationSet
    every: Duration
    where: Expr | None = None
    sample: Percent | None = None


class Rule(Strict):
    name: str
    priority: int | None = None
    schedule: Duration | None = Field(None, description='"15 min" or a cron string')
    disabled: bool | None = None
    place: Place | None = None
    replicate: Replicate | None = None
    archive: Archive | None = None
    release: Release | None = None
    expire: Expire | None = None
    protect: Protect | None = None
    alarm: list[Alarm] | Alarm | None = None
    grant: list[Grant] | Grant | None = None
    run: Run | None = None
    verify: Verify | None = None


VERBS = (
    "place",
    "replicate",
    "archive",
    "release",
    "expire",
    "protect",
    "alarm",
    "grant",
    "run",
    "verify",
)


class RuleFile(Strict):
    version: Literal[1]
    station: str | None = None
    rules: list[Rule] = []


def rules_json_schema() -> dict[str, Any]:
    """The schema, with each rule required to hold exactly one verb."""
    schema = RuleFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "policyd rule file"
    rule = schema["$defs"]["Rule"]
    rule["oneOf"] = [{"required": [verb]} for verb in VERBS]
    return schema


def clause_keys(verb: str) -> set[str]:
    """The YAML keys a verb's mapping takes, as the schema says (for consistency tests)."""
    model = {
        "place": Place,
        "replicate": Replicate,
        "archive": Archive,
        "release": Release,
        "expire": Expire,
        "protect": Protect,
        "alarm": Alarm,
        "grant": Grant,
        "run": Run,
        "verify": Verify,
    }[verb]
    return {field.alias or name for name, field in model.model_fields.items()}
