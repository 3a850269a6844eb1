"""The site configuration (`policyd.yaml`) and the station files next to it.

A config repository is reviewed and merged by people, then read by a daemon that
deletes replicas on its say-so, so a config that is not exactly right must not load:
every key is checked, unknown keys are errors (a misspelt `min_copise` must not quietly
leave the default), and every problem in the config and in every station file is
reported at once, each at its line and column, before anything acts on it.

Relative paths and URLs resolve against the config file's own folder, so the same
repository means the same thing whichever directory policyd is started from.
"""

from __future__ import annotations

import difflib
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import unquote, urlsplit
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    StrictBool,
    StrictInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from ruamel.yaml.comments import CommentedMap

from policyd.diagnostics import Diagnostic, DiagnosticError
from policyd.units import (
    DURATION_FORMS,
    SIZE_FORMS,
    format_duration,
    parse_duration,
    parse_size,
)
from policyd.yamlsource import check, load_yaml, span_at, to_plain

CONFIG_FILENAME: Final = "policyd.yaml"
DEFAULT_CATALOG: Final = "sqlite:///catalog.db"
DEFAULT_RULE_GLOBS: Final = ("rules/*.policy", "rules/*.yaml")
DEFAULT_WORKFLOW_GLOBS: Final = ("workflows/*.yaml",)
DEFAULT_STATION_GLOBS: Final = ("stations/*.yaml",)
ENV_CONFIG: Final = "POLICYD_CONFIG"
ENV_CATALOG: Final = "POLICYD_CATALOG"

#: Names of locations, stations and channels, as the rules language accepts them bare.
NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")


# ---------------------------------------------------------------------------
# value types


def _root(info: ValidationInfo) -> Path:
    """The folder relative paths are taken from: the config's, or the working directory."""
    context = info.context or {}
    root = context.get("root")
    return Path(root) if root is not None else Path.cwd()


def _name_from_scalar(value: Any) -> Any:
    # YAML reads a station called `2` as a number; it is still a name.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name; use letters, digits, '_' and '-' only")
    return value


Name = Annotated[str, BeforeValidator(_name_from_scalar), AfterValidator(_check_name)]


def _size(value: Any) -> int:
    return parse_size(value)


Size = Annotated[
    int,
    BeforeValidator(_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*[0-9.]+\s*[A-Za-z]*\s*$"},
            ],
            "description": f"A size: {SIZE_FORMS}.",
        }
    ),
]


def _duration(value: Any) -> float:
    return parse_duration(value)


#: A duration in seconds; written with its unit in the file.
Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*[0-9.]+\s*[A-Za-z]+\s*$",
            "description": f"A duration: {DURATION_FORMS}.",
        }
    ),
]


def _is_timezone(value: str) -> bool:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _check_timezone(value: str) -> str:
    if _is_timezone(value):
        return value
    known = available_timezones() | {"UTC"}
    folded = {name.lower(): name for name in known}
    suggestion = folded.get(value.lower()) or next(
        iter(difflib.get_close_matches(value, sorted(known), n=1, cutoff=0.75)), None
    )
    message = f"unknown timezone {value!r}; use an IANA name such as 'America/Chicago' or 'UTC'"
    if suggestion:
        message += f" (did you mean {suggestion!r}?)"
    raise ValueError(message)


Timezone = Annotated[str, AfterValidator(_check_timezone)]


def _one_or_many(value: Any) -> Any:
    # `notify: ops` and `notify: [ops]` mean the same to whoever writes them.
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    return value


def _none_as_empty_mapping(value: Any) -> Any:
    # `quotas:` with every entry commented out is an empty section, not an error.
    return {} if value is None else value


def _check_glob(pattern: str) -> str:
    if not pattern.strip():
        raise ValueError("a file pattern cannot be empty")
    if Path(pattern).is_absolute() or pattern.startswith("~"):
        raise ValueError(
            f"{pattern!r}: file patterns are relative to the config folder, e.g. 'rules/*.policy'"
        )
    if ".." in Path(pattern).parts:
        raise ValueError(f"{pattern!r}: file patterns must stay inside the config folder")
    return pattern


Globs = Annotated[list[Annotated[str, AfterValidator(_check_glob)]], BeforeValidator(_one_or_many)]
Names = Annotated[list[Name], BeforeValidator(_one_or_many)]


def resolve_path(value: str | Path, root: Path) -> Path:
    """`~` expanded, and a relative path taken from `root` (the config's folder)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = root / path
    return Path(os.path.normpath(path))


def _resolved_path(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("expected a file path, got empty text")
        return resolve_path(value, _root(info))
    return value


ConfigPath = Annotated[Path, BeforeValidator(_resolved_path)]


_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(.*)$", re.DOTALL)
_HOSTED_SCHEMES: Final = frozenset({"sftp", "globus"})


def _file_url(path: Path) -> str:
    return path.as_uri()


def resolve_location_url(url: str, root: Path) -> str:
    """A location URL with any local folder made absolute, as a `file:///` URL.

    `file:///abs` stays; `file:rel/dir` and a plain path become `file:///ROOT/rel/dir`;
    remote URLs (sftp://, globus://, osfs://, ...) are kept as written.
    """
    text = url.strip()
    if not text:
        raise ValueError(
            "a location needs a url, e.g. 'file:///data/8idi' or 'sftp://user@host/path'"
        )
    match = _SCHEME_RE.match(text)
    if match is None:
        return _file_url(resolve_path(text, root))
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "file":
        if rest.startswith("//"):
            host, _, path = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise ValueError(
                    f"{url!r}: a file:// URL names a folder on this machine; "
                    f"for one on {host!r} use sftp://{host}/PATH"
                )
            return _file_url(Path(os.path.normpath("/" + unquote(path))))
        return _file_url(resolve_path(unquote(rest), root))
    if scheme in _HOSTED_SCHEMES and not urlsplit(text).netloc:
        raise ValueError(f"{url!r}: a {scheme} URL needs a host: {scheme}://HOST/PATH")
    return text


def resolve_catalog_url(url: str, root: Path) -> str:
    """The catalog URL with a relative SQLite file made absolute against `root`.

    SQLAlchemy would take a relative SQLite path from the working directory, which
    would give the daemon and a person at a shell two different catalogs.
    """
    match = re.match(r"^(sqlite(?:\+[A-Za-z0-9_]+)?):///(.*)$", url, re.DOTALL)
    if match is None:
        return url
    dialect, rest = match.groups()
    path, sep, query = rest.partition("?")
    if path in ("", ":memory:") or path.startswith("file:"):
        return url
    return f"{dialect}:///{resolve_path(path, root)}{sep}{query}"


@dataclass(frozen=True)
class Schedule:
    """How often the daemon evaluates a rule: every so many seconds, or a cron string."""

    every: float | None = None
    cron: str | None = None

    def __str__(self) -> str:
        if self.cron is not None:
            return self.cron
        return format_duration(self.every or 0.0)


SCHEDULE_FORMS: Final = (
    "a duration such as '15 min' or '1 day', or a cron string such as '0 3 * * *' "
    "(minute hour day-of-month month day-of-week)"
)


def _duration_or_none(text: str) -> float | None:
    """A schedule is a duration when it reads as one; otherwise it may be cron text."""
    try:
        return parse_duration(text)
    except ValueError:
        return None


def parse_schedule(value: Any) -> Schedule:
    """A schedule from config or rule text; the cron fields are checked as the daemon will."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        parse_duration(value)  # raises the "a duration needs its unit" message
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a schedule; write {SCHEDULE_FORMS}")
    text = value.strip()
    if text.startswith("every "):
        text = text[len("every ") :].strip()
    seconds = _duration_or_none(text)
    if seconds is not None:
        if seconds <= 0:
            raise ValueError(f"{value!r}: a schedule must be longer than 0 seconds")
        return Schedule(every=seconds)
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{value!r} is not a schedule; write {SCHEDULE_FORMS}")
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(" ".join(fields))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid cron string: {exc}") from exc
    return Schedule(cron=" ".join(fields))


ScheduleField = Annotated[
    Schedule,
    PlainValidator(parse_schedule),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "description": f"A schedule: {SCHEDULE_FORMS}."}),
]


def _check_template(value: str) -> str:
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid template: {exc}") from exc
    fields = [field for _, field, _, _ in parts if field is not None]
    unknown = sorted({field for field in fields if field != "user"})
    if unknown:
        raise ValueError(
            f"{value!r}: a template may use only {{user}}, found "
            + ", ".join(f"{{{field}}}" for field in unknown)
        )
    if "user" not in fields:
        raise ValueError(f"{value!r}: the template must contain {{user}}, e.g. '{{user}}@anl.gov'")
    return value


Template = Annotated[str, AfterValidator(_check_template)]


# ---------------------------------------------------------------------------
# models


class _Section(BaseModel):
    """Every part of the config refuses keys it does not know."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Location(_Section):
    """A storage area policyd places replicas on."""

    url: str
    tier: Name = "disk"
    site: Name | None = None
    capacity: Size | None = None
    parallel: StrictInt | None = Field(default=None, ge=1)
    ssh_key: ConfigPath | None = None
    # The same folder as a Globus collection sees it, so Globus can copy between this
    # location and globus:// ones (policyd/actions/globus.py).
    globus: str | None = None

    @field_validator("url")
    @classmethod
    def _resolve_url(cls, value: str, info: ValidationInfo) -> str:
        return resolve_location_url(value, _root(info))

    @field_validator("globus")
    @classmethod
    def _check_globus(cls, value: str | None) -> str | None:
        if value is not None and (
            urlsplit(value).scheme.lower() != "globus" or not urlsplit(value).netloc
        ):
            raise ValueError(
                f"{value!r}: write the Globus collection that serves this folder as "
                "globus://COLLECTION-UUID/PATH"
            )
        return value

    @property
    def scheme(self) -> str:
        """`file`, `sftp`, `globus`, ...: which executor moves data to and from here."""
        return urlsplit(self.url).scheme.lower()

    @property
    def root_path(self) -> Path | None:
        """The local folder of a `file://` location; None for remote ones."""
        if self.scheme != "file":
            return None
        return Path(unquote(urlsplit(self.url).path))


_EMAIL_RE: Final = re.compile(r"^[^@\s]+@[^@\s]+$")


def _check_email(address: str) -> str:
    if not _EMAIL_RE.match(address):
        raise ValueError(f"{address!r} is not an email address")
    return address


def _non_empty(addresses: list[str]) -> list[str]:
    if not addresses:
        raise ValueError("expected at least one email address")
    return addresses


EmailAddresses = Annotated[
    list[Annotated[str, AfterValidator(_check_email)]],
    BeforeValidator(_one_or_many),
    AfterValidator(_non_empty),
]


def _log_target(value: Any) -> Any:
    # `log: true` and `log: "-"` both mean policyd's own log (stderr, or the journal).
    if value is True:
        return "-"
    return value


class NotifyChannel(_Section):
    """Where a notice goes: mail, a chat webhook, or a log. Exactly one of them."""

    email: EmailAddresses | None = None
    webhook: str | None = None
    log: Annotated[str, BeforeValidator(_log_target)] | None = None

    @field_validator("webhook")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("log")
    @classmethod
    def _resolve_log(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "-":
            return value
        if not value.strip():
            raise ValueError("expected a file path or true")
        return str(resolve_path(value, _root(info)))

    @model_validator(mode="after")
    def _exactly_one(self) -> NotifyChannel:
        given = [kind for kind in ("email", "webhook", "log") if getattr(self, kind) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of email, webhook, log (found: {found})")
        return self

    @property
    def kind(self) -> Literal["email", "webhook", "log"]:
        if self.email is not None:
            return "email"
        if self.webhook is not None:
            return "webhook"
        return "log"


class Smtp(_Section):
    """The mail relay for `email` channels."""

    host: str
    port: StrictInt = Field(default=25, ge=1, le=65535)
    user: str | None = None
    password_file: ConfigPath | None = None
    starttls: StrictBool = False
    sender: Annotated[str, AfterValidator(_check_email)] | None = None


class Globus(_Section):
    """Credentials for globus:// locations and Globus ACLs."""

    token_file: ConfigPath
    client_id: str | None = None

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                UUID(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a Globus client id (a UUID)") from exc
        return value


class Identities(_Section):
    """How an experiment user becomes an account on storage, for `grant`."""

    system_user: Template = "{user}"
    globus_identity: Template | None = None


class Safety(_Section):
    """The floor under every delete, whatever the rules say."""

    min_copies: StrictInt = Field(default=1, ge=1)
    max_delete_per_run: Size | None = None
    release_grace: Duration = Field(default="0 s", validate_default=True)


class Retry(_Section):
    """How failed actions are retried before they are suspended."""

    attempts: StrictInt = Field(default=5, ge=1)
    backoff: Duration = Field(default="30 s", validate_default=True)
    max_backoff: Duration = Field(default="1 hour", validate_default=True)

    @model_validator(mode="after")
    def _ordered(self) -> Retry:
        if self.max_backoff < self.backoff:
            raise ValueError(
                f"max_backoff ({format_duration(self.max_backoff)}) is shorter than "
                f"backoff ({format_duration(self.backoff)})"
            )
        return self


class Alarms(_Section):
    """Alarm re-notification and where policyd's own alarms go."""

    repeat: Duration = Field(default="24 hours", validate_default=True)
    default_notify: Names = Field(default_factory=list)


class Defaults(_Section):
    """Values a rule takes when it does not say."""

    schedule: ScheduleField = Field(default="15 min", validate_default=True)


class Station(_Section):
    """A beamline: its contacts, the locations it owns, its timezone."""

    name: Name
    description: str = ""
    contacts: Names = Field(default_factory=list)
    locations: Names = Field(default_factory=list)
    timezone: Timezone | None = None

    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path | None:
        """The station file this came from."""
        return self._path


class SiteConfig(_Section):
    """`policyd.yaml`: the whole site as the planner, executors and daemon see it."""

    site: Name
    timezone: Timezone = "UTC"
    catalog: str = Field(default=DEFAULT_CATALOG, validate_default=True)
    locations: Annotated[dict[Name, Location], BeforeValidator(_none_as_empty_mapping)] = Field(
        default_factory=dict
    )
    quotas: Annotated[
        dict[Name, Annotated[dict[Name, Size], BeforeValidator(_none_as_empty_mapping)]],
        BeforeValidator(_none_as_empty_mapping),
    ] = Field(default_factory=dict)
    notify: Annotated[dict[Name, NotifyChannel], BeforeValidator(_none_as_empty_mapping)] = Field(
        default_factory=dict
    )
    smtp: Smtp | None = None
    globus: Globus | None = None
    identities: Identities = Field(default_factory=Identities)
    safety: Safety = Field(default_factory=Safety)
    retry: Retry = Field(default_factory=Retry)
    alarms: Alarms = Field(default_factory=Alarms)
    defaults: Defaults = Field(default_factory=Defaults)
    rule_globs: Globs = Field(default=list(DEFAULT_RULE_GLOBS), alias="rules")
    workflow_globs: Globs = Field(default=list(DEFAULT_WORKFLOW_GLOBS), alias="workflows")
    station_globs: Globs = Field(default=list(DEFAULT_STATION_GLOBS), alias="stations")

    _path: Path | None = PrivateAttr(default=None)
    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _stations: dict[str, Station] = PrivateAttr(default_factory=dict)
    _warnings: list[Diagnostic] = PrivateAttr(default_factory=list)

    @field_validator("catalog")
    @classmethod
    def _resolve_catalog(cls, value: str, info: ValidationInfo) -> str:
        text = value.strip()
        if "://" not in text:
            raise ValueError(
                f"{value!r} is not a database URL; write e.g. 'sqlite:///catalog.db' "
                "or 'postgresql+psycopg2://user@host/db'"
            )
        return resolve_catalog_url(text, _root(info))

    @model_validator(mode="after")
    def _default_location_site(self) -> SiteConfig:
        # A location without `site` is at this site; copies prefer same-site sources.
        for location in self.locations.values():
            if location.site is None:
                location.site = self.site
        return self

    @classmethod
    def empty(cls, catalog_url: str | None = None) -> SiteConfig:
        """A site with no locations or rules, for commands run without a config file
        (typically with POLICYD_CATALOG set, to look at or import into a catalog)."""
        data: dict[str, Any] = {"site": "local", "rules": [], "workflows": [], "stations": []}
        config = cls.model_validate(data, context={"root": Path.cwd()})
        if catalog_url:
            config.catalog = catalog_url
        return config

    @property
    def path(self) -> Path | None:
        """The config file, or None for `empty()`."""
        return self._path

    @property
    def root(self) -> Path:
        """The config's folder, absolute: what relative paths in it are relative to."""
        return self._root

    @property
    def stations(self) -> dict[str, Station]:
        """Station files by station name, in file order."""
        return self._stations

    @property
    def warnings(self) -> list[Diagnostic]:
        """Findings that do not stop the config from loading (a pattern matching nothing)."""
        return self._warnings

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def catalog_url(self, from_env: bool = True) -> str:
        """POLICYD_CATALOG if set (so one config can be tried on a scratch catalog);
        `from_env=False` for commands that make their own (init, demo)."""
        override = os.environ.get(ENV_CATALOG) if from_env else None
        return override if override else self.catalog

    def files_matching(self, globs: Iterable[str]) -> list[Path]:
        """Files under the config folder matching `globs`; see the module-level function."""
        return files_matching(self._root, globs)

    def rule_files(self) -> list[Path]:
        return self.files_matching(self.rule_globs)

    def workflow_files(self) -> list[Path]:
        return self.files_matching(self.workflow_globs)

    def station_files(self) -> list[Path]:
        return self.files_matching(self.station_globs)


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of `policyd.yaml`, for editors and `policyd schema config`."""
    return SiteConfig.model_json_schema(by_alias=True)


def station_json_schema() -> dict[str, Any]:
    """The JSON Schema of a station file."""
    return Station.model_json_schema(by_alias=True)


# ---------------------------------------------------------------------------
# finding and loading


def files_matching(root: Path, globs: Iterable[str]) -> list[Path]:
    """Files matching `globs`, relative to `root`, without repeats.

    Order is pattern by pattern, and sorted within a pattern, because rules are
    evaluated in that order and it must not depend on the file system. Hidden files
    and folders (editor backups, `.git`) are skipped.
    """
    seen: set[Path] = set()
    out: list[Path] = []
    for pattern in globs:
        found = []
        for match in root.glob(pattern):
            relative = match.relative_to(root)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if match.is_file():
                found.append(relative)
        for relative in sorted(found):
            if relative not in seen:
                seen.add(relative)
                out.append(relative)
    return out


def find_config(explicit: str | Path | None = None) -> Path | None:
    """The site config to use: `-c PATH`, else $POLICYD_CONFIG, else ./policyd.yaml.

    A folder means its `policyd.yaml`. An explicit path is returned even when it does
    not exist, so that loading it reports the mistake instead of silently using none.
    """
    if explicit is not None and str(explicit) != "":
        candidate = Path(explicit).expanduser()
    elif os.environ.get(ENV_CONFIG):
        candidate = Path(os.environ[ENV_CONFIG]).expanduser()
    else:
        default = Path(CONFIG_FILENAME)
        return default if default.is_file() else None
    if candidate.is_dir():
        candidate = candidate / CONFIG_FILENAME
    return candidate


def _names_in(tree: Any, key: str) -> list[str] | None:
    """Keys of a top-level mapping section as written; None when they cannot be known
    (the file or the section is not a mapping), so that nothing is checked against them."""
    if not isinstance(tree, Mapping):
        return None
    section = tree.get(key)
    if section is None:
        return []
    if not isinstance(section, Mapping):
        return None
    return [str(name) for name in section]


def _unknown_hint(name: str, known: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _known_list(what: str, known: Sequence[str]) -> str:
    if not known:
        return f"no {what} are defined in the site config"
    return f"defined {what}: {', '.join(known)}"


def _check_references(
    tree: Any,
    file: str,
    section: tuple[str | int, ...],
    known: Sequence[str] | None,
    code: str,
    what: str,
    plural: str,
) -> list[Diagnostic]:
    """Diagnostics for each name in the list (or single name) at `section` not in `known`."""
    if known is None:
        return []
    node: Any = tree
    for step in section:
        if isinstance(node, Mapping) and step in node:
            node = node[step]
        else:
            return []
    items: list[tuple[tuple[str | int, ...], Any]]
    if isinstance(node, list):
        items = [((*section, index), value) for index, value in enumerate(node)]
    else:
        items = [(section, node)]
    out = []
    for path, value in items:
        if not isinstance(value, str | int) or isinstance(value, bool):
            continue  # a wrong type is reported by validation
        name = str(value)
        if name in known:
            continue
        where = ".".join(str(step) for step in section)
        out.append(
            Diagnostic(
                code,
                f"unknown {what} {name!r} in {where}; {_known_list(plural, known)}",
                span_at(tree, path, file),
                hint=_unknown_hint(name, known),
            )
        )
    return out


def _site_cross_checks(tree: Any, file: str) -> list[Diagnostic]:
    locations = _names_in(tree, "locations")
    channels = _names_in(tree, "notify")
    out: list[Diagnostic] = []
    quotas = tree.get("quotas") if isinstance(tree, Mapping) else None
    if isinstance(quotas, Mapping) and locations is not None:
        for key in quotas:
            name = str(key)
            if name not in locations:
                out.append(
                    Diagnostic(
                        "unknown-location",
                        f"unknown location {name!r} in quotas; "
                        f"{_known_list('locations', locations)}",
                        span_at(tree, ("quotas", key), file, at_key=True),
                        hint=_unknown_hint(name, locations),
                    )
                )
    out += _check_references(
        tree,
        file,
        ("alarms", "default_notify"),
        channels,
        "unknown-channel",
        "notify channel",
        "notify channels",
    )
    return out


def _station_cross_checks(
    tree: Any, file: str, locations: list[str] | None, channels: list[str] | None
) -> list[Diagnostic]:
    out = _check_references(
        tree, file, ("contacts",), channels, "unknown-channel", "notify channel", "notify channels"
    )
    out += _check_references(
        tree, file, ("locations",), locations, "unknown-location", "location", "locations"
    )
    return out


def _fixed_folder(root: Path, pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard: `rules` for `rules/*.yaml`."""
    fixed = []
    for part in Path(pattern).parts[:-1]:
        if any(char in part for char in "*?["):
            break
        fixed.append(part)
    return root.joinpath(*fixed)


def _unmatched_glob_warnings(
    tree: Any, file: str, config: SiteConfig, root: Path
) -> list[Diagnostic]:
    """A pattern whose folder does not exist is most likely a typo; an existing empty
    folder is a site that has no such files yet, which is fine."""
    out: list[Diagnostic] = []
    if not isinstance(tree, Mapping):
        return out
    for key, globs in (
        ("rules", config.rule_globs),
        ("workflows", config.workflow_globs),
        ("stations", config.station_globs),
    ):
        if key not in tree:
            continue
        written = tree[key]
        for index, pattern in enumerate(globs):
            if _fixed_folder(root, pattern).is_dir():
                continue  # an empty folder is a site without such files yet, not a typo
            path: tuple[str | int, ...] = (key, index) if isinstance(written, list) else (key,)
            out.append(
                Diagnostic(
                    "no-match",
                    f"{key}: {pattern!r} matches no file: there is no folder "
                    f"{_fixed_folder(root, pattern).relative_to(root).as_posix()!r}",
                    span_at(tree, path, file),
                    severity="warning",
                )
            )
    return out


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(path.absolute()))


def _load_stations(
    config_file: Path,
    root: Path,
    station_globs: Sequence[str],
    locations: list[str] | None,
    channels: list[str] | None,
) -> tuple[dict[str, Station], list[Diagnostic]]:
    stations: dict[str, Station] = {}
    diagnostics: list[Diagnostic] = []
    for relative in files_matching(root, station_globs):
        station_file = config_file.parent / relative
        shown = str(station_file)
        try:
            tree = load_yaml(station_file)
        except DiagnosticError as exc:
            diagnostics += exc.diagnostics
            continue
        if tree is None:
            tree = CommentedMap()
        station, problems = check(Station, tree, shown, context={"root": root})
        diagnostics += problems
        diagnostics += _station_cross_checks(tree, shown, locations, channels)
        if station is None:
            continue
        station._path = station_file
        previous = stations.get(station.name)
        if previous is not None:
            diagnostics.append(
                Diagnostic(
                    "duplicate-station",
                    f"station {station.name!r} is already defined in {previous.path}",
                    span_at(tree, ("name",), shown),
                )
            )
            continue
        stations[station.name] = station
    return stations, diagnostics


def _written_station_globs(tree: Any) -> list[str]:
    """The station patterns of a config that failed validation, so that its station
    files are still checked and their problems reported in the same run."""
    written = tree.get("stations") if isinstance(tree, Mapping) else None
    if written is None:
        return list(DEFAULT_STATION_GLOBS)
    try:
        return TypeAdapter(Globs).validate_python(to_plain(written))
    except ValidationError:
        return []


def load_site_config(path: str | Path) -> SiteConfig:
    """Load `policyd.yaml` and every station file it names.

    Raises DiagnosticError with every error of the config and of all station files
    (and the warnings found on the way), each at its file, line and column.
    """
    config_file = Path(path)
    if config_file.is_dir():
        config_file = config_file / CONFIG_FILENAME
    file = str(config_file)
    root = _absolute(config_file.parent)

    tree = load_yaml(config_file)  # an unreadable or unparsable config stops here
    if tree is None:
        tree = CommentedMap()
    config, diagnostics = check(SiteConfig, tree, file, context={"root": root})
    diagnostics += _site_cross_checks(tree, file)

    station_globs = config.station_globs if config is not None else _written_station_globs(tree)
    locations = _names_in(tree, "locations")
    channels = _names_in(tree, "notify")
    stations, station_diagnostics = _load_stations(
        config_file, root, station_globs, locations, channels
    )
    diagnostics += station_diagnostics

    warnings: list[Diagnostic] = []
    if config is not None:
        warnings += _unmatched_glob_warnings(tree, file, config, root)

    errors = [diag for diag in diagnostics if diag.severity == "error"]
    if errors or config is None:
        raise DiagnosticError(diagnostics + warnings)
    config._path = config_file
    config._root = root
    config._stations = stations
    config._warnings = warnings + [d for d in diagnostics if d.severity != "error"]
    return config


__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_CATALOG",
    "ENV_CATALOG",
    "ENV_CONFIG",
    "Alarms",
    "Defaults",
    "Globus",
    "Identities",
    "Location",
    "NotifyChannel",
    "Retry",
    "Safety",
    "Schedule",
    "SiteConfig",
    "Smtp",
    "Station",
    "config_json_schema",
    "files_matching",
    "find_config",
    "load_site_config",
    "parse_schedule",
    "resolve_catalog_url",
    "resolve_location_url",
    "resolve_path",
    "station_json_schema",
]
