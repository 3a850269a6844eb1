"""The attributes and functions of the rules language (spec/rules.md section 4), as data.

The checker, the docs and the three backends all need the same table: which names
exist, what type each has, and where each may be used. Keeping it as data here means
a new attribute is one line, `check` suggests it at once ("did you mean"), and the
docs generator can list it without reading code.

A *root* is the first segment of an attribute (`file`, `experiment`, `station`, `now`,
`location`); what a clause may use is said as a set of roots (see
`typecheck.Context`). Functions that look at the file itself (`copies`, `path_on`)
need the `file` root too; the location-level ones do not, so that
`alarm when usage("voyager") > 80%` is fine where no file is in sight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from policyd.rules.types import (
    ANY,
    BOOL,
    DURATION,
    NUMBER,
    PERCENT,
    SIZE,
    TEXT,
    TIME,
    Type,
    list_of,
)

ROOTS: Final = frozenset({"file", "experiment", "station", "now", "location"})


@dataclass(frozen=True, slots=True)
class AttributeInfo:
    """One attribute: its dotted name, type, and whether it may be null when present."""

    name: str
    type: Type
    nullable: bool = False
    description: str = ""

    @property
    def root(self) -> str:
        return self.name.split(".", 1)[0]


#: spec/rules.md section 4, the attributes table.
ATTRIBUTES: Final[dict[str, AttributeInfo]] = {
    info.name: info
    for info in (
        AttributeInfo("file.path", TEXT, description="path inside the experiment"),
        AttributeInfo("file.name", TEXT, description="last segment of the path"),
        AttributeInfo("file.dir", TEXT, description='everything before the name ("" at top)'),
        AttributeInfo("file.ext", TEXT, description="after the last . of the name, no dot"),
        AttributeInfo("file.size", SIZE, description="fileSize"),
        AttributeInfo("file.md5", TEXT, nullable=True, description="md5Sum, null until known"),
        AttributeInfo("file.created", TIME, description="fileCreationTime"),
        AttributeInfo("file.modified", TIME, description="fileModificationTime"),
        AttributeInfo("experiment.name", TEXT),
        AttributeInfo("experiment.type", TEXT),
        AttributeInfo("experiment.station", TEXT),
        AttributeInfo("experiment.description", TEXT),
        AttributeInfo("experiment.start", TIME),
        AttributeInfo("experiment.end", TIME, nullable=True),
        AttributeInfo("experiment.active", BOOL),
        AttributeInfo("experiment.users", list_of(TEXT), description="experiment roles"),
        AttributeInfo("experiment.pinned", BOOL),
        AttributeInfo("station", TEXT, description="station of the file's experiment"),
        AttributeInfo("now", TIME, description="the evaluation time"),
        AttributeInfo("location.name", TEXT),
        AttributeInfo("location.tier", TEXT),
        AttributeInfo("location.site", TEXT),
    )
}

#: Attribute prefixes that take any key (`file.meta.sample`, `file.meta["beam-energy"]`);
#: their values are untyped and may be missing (null).
META_PREFIXES: Final = frozenset({"file.meta", "experiment.meta"})
META_TYPE: Final = ANY


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter of a function.

    `literal` parameters must be written as a constant (a location or station name in
    a string), because they name things that `check` resolves and the backends look up
    ahead of evaluation, not per file.
    """

    name: str
    type: Type
    literal: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class Function:
    """A function: positional parameters (all required), keyword ones (all optional)."""

    name: str
    positional: tuple[Parameter, ...]
    keywords: tuple[Parameter, ...]
    result: Type
    needs: frozenset[str] = field(default_factory=frozenset)
    description: str = ""

    def usage(self) -> str:
        """How to call it, for hints: `usage("LOC" [, station = "S"])`."""
        parts = [_placeholder(p) for p in self.positional]
        keywords = "".join(f" [, {p.name} = {_placeholder(p)}]" for p in self.keywords)
        if not parts and keywords:
            keywords = keywords.replace(" [, ", "[", 1)
        return f"{self.name}({', '.join(parts)}{keywords})"


def _placeholder(parameter: Parameter) -> str:
    if parameter.literal:
        return f'"{parameter.name.upper()}"'
    return parameter.name.upper()


_LOCATION: Final = Parameter("loc", TEXT, literal=True, description="a location name")
_STATION: Final = Parameter("station", TEXT, literal=True, description="a station name")

#: spec/rules.md section 4, functions.
FUNCTIONS: Final[dict[str, Function]] = {
    f.name: f
    for f in (
        Function(
            "age",
            (Parameter("t", TIME),),
            (),
            DURATION,
            description="now - T",
        ),
        Function(
            "copies",
            (),
            (
                Parameter("tier", TEXT, literal=True, description="only replicas on this tier"),
                Parameter("location", TEXT, literal=True, description="only on this location"),
            ),
            NUMBER,
            needs=frozenset({"file"}),
            description="verified replicas of the file",
        ),
        Function(
            "usage",
            (_LOCATION,),
            (_STATION,),
            PERCENT,
            description="used / capacity, or used / quota with a station quota",
        ),
        Function("used", (_LOCATION,), (_STATION,), SIZE, description="bytes used"),
        Function("free", (_LOCATION,), (), SIZE, description="bytes free"),
        Function(
            "path_on",
            (_LOCATION,),
            (),
            TEXT,
            needs=frozenset({"file"}),
            description="absolute path of the file's replica on a file:// location, or null",
        ),
        Function(
            "time_to_full",
            (_LOCATION,),
            (),
            DURATION,
            description="capacity left / growth rate over 30 days, or null",
        ),
    )
}


def attribute_names(roots: frozenset[str] | None = None) -> list[str]:
    """Every attribute name (with `file.meta.KEY` forms), for suggestions and docs."""
    names = [n for n, info in ATTRIBUTES.items() if roots is None or info.root in roots]
    names += [
        f"{p}.KEY" for p in sorted(META_PREFIXES) if roots is None or p.split(".")[0] in roots
    ]
    return names
