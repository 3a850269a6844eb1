"""`policyd check [PATH ...]`: every problem of a config repository, in one run.

Config repositories run this in their own CI and as a pre-commit hook, so it must work
with nothing but the files: no storage mounted, no database reachable (nothing here
opens the catalog; `catalog:` is only read as text). It loads the site config, every
station, workflow and rule file the config names (and any file given as a PATH), runs
the checker's passes (`policyd.rules.passes`) and reports every diagnostic sorted by
file, line and column. A config with errors does not stop the run: the names it
defines are still read from its YAML, so the rules are checked against them in the
same run, and the mistakes of every file come out together. Within a rule file too: a
rule with a syntax error or an unknown key is reported and left out, and the file's
other rules are still checked. Whatever the input, the outcome is diagnostics, never a
traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from policyd.diagnostics import Diagnostic, DiagnosticError, Span, render_all, sorted_diagnostics
from policyd.gcpause import gc_paused
from policyd.grammar.dsl import parse_policy_partial
from policyd.grammar.yaml_rules import parse_yaml_rules_partial
from policyd.rules.passes import CheckContext, RuleFile, SiteNames, run_passes
from policyd.rules.workflows import Workflow, load_workflow_file, load_workflows
from policyd.stations.config import (
    CONFIG_FILENAME,
    DEFAULT_RULE_GLOBS,
    DEFAULT_STATION_GLOBS,
    DEFAULT_WORKFLOW_GLOBS,
    Globs,
    SiteConfig,
    Station,
    files_matching,
    find_config,
    load_site_config,
)
from policyd.yamlsource import check as validate_model
from policyd.yamlsource import load_yaml

__all__ = ["CheckResult", "check_command", "check_site", "render_check"]

Format = Literal["text", "json"]

RULE_SUFFIXES = (".policy", ".yaml", ".yml")


@dataclass
class CheckResult:
    """Every diagnostic of the run (sorted) and the files that were read."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    rule_files: list[RuleFile] = field(default_factory=list)  # the first site's, in config order

    @property
    def errors(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for d in self.diagnostics if d.severity != "error")

    @property
    def ok(self) -> bool:
        return self.errors == 0


# ---- one site


@dataclass
class _Site:
    """What one config repository contributes: its names and the files to check."""

    config_file: Path
    names: SiteNames = field(default_factory=SiteNames)
    rule_paths: list[Path] = field(default_factory=list)
    workflows: dict[str, Workflow] = field(default_factory=dict)
    stations: list[str] = field(default_factory=list)


class _Run:
    """Collects diagnostics and the files read, across sites and loose files."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self.files: dict[str, None] = {}
        self.seen: set[Path] = set()
        self.rule_files: list[RuleFile] = []

    def read(self, path: Path) -> None:
        self.files[str(path)] = None

    def first_time(self, path: Path) -> bool:
        """Whether `path` is not yet checked (a file named twice is checked once)."""
        try:
            key = path.resolve()
        except (OSError, RuntimeError):
            key = path
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _mapping(tree: Any, key: str) -> Mapping[Any, Any] | None:
    if not isinstance(tree, Mapping):
        return None
    section = tree.get(key)
    if section is None:
        return {}
    return section if isinstance(section, Mapping) else None


def _globs(tree: Any, key: str, default: Sequence[str]) -> list[str]:
    """The file patterns of a config that failed validation: the valid ones among those
    written (a bad pattern is already reported), so the other files are still checked."""
    if not isinstance(tree, Mapping) or tree.get(key) is None:
        return list(default)
    written = tree[key]
    items = list(written) if isinstance(written, list) else [written]
    out: list[str] = []
    for item in items:
        try:
            out += TypeAdapter(Globs).validate_python([item])
        except Exception:
            continue
    return out


def _raw_tree(path: Path) -> Any:
    try:
        return load_yaml(path)
    except Exception:
        return None


def _names_from_tree(tree: Any) -> tuple[dict[str, str] | None, list[str] | None]:
    """Locations (with tiers) and channels as written in a config that did not validate."""
    locations_section = _mapping(tree, "locations")
    locations: dict[str, str] | None = None
    if locations_section is not None:
        locations = {}
        for name, value in locations_section.items():
            tier = value.get("tier") if isinstance(value, Mapping) else None
            locations[str(name)] = str(tier) if isinstance(tier, str) else "disk"
    channels_section = _mapping(tree, "notify")
    channels = None if channels_section is None else [str(n) for n in channels_section]
    return locations, channels


def _station_name(path: Path) -> str | None:
    tree = _raw_tree(path)
    name = tree.get("name") if isinstance(tree, Mapping) else None
    return str(name) if isinstance(name, str | int) and not isinstance(name, bool) else None


def _load_site(config_file: Path, run: _Run) -> _Site:
    """The site's names and files; config errors become diagnostics and the run goes on."""
    site = _Site(config_file)
    folder = config_file.parent
    run.first_time(config_file)
    run.read(config_file)
    config: SiteConfig | None = None
    try:
        config = load_site_config(config_file)
    except DiagnosticError as exc:
        run.diagnostics += exc.diagnostics
    if config is not None:
        run.diagnostics += config.warnings
        locations: dict[str, str] | None = {n: loc.tier for n, loc in config.locations.items()}
        channels: list[str] | None = list(config.notify)
        stations: list[str] | None = list(config.stations)
        station_files = [folder / p for p in config.station_files()]
        rule_globs, workflow_globs = list(config.rule_globs), list(config.workflow_globs)
    else:
        tree = _raw_tree(config_file) if config_file.is_file() else None
        locations, channels = _names_from_tree(tree) if tree is not None else (None, None)
        station_globs = _globs(tree, "stations", DEFAULT_STATION_GLOBS)
        station_files = [folder / p for p in files_matching(folder, station_globs)]
        found = [_station_name(p) for p in station_files]
        stations = [n for n in found if n is not None] if tree is not None else None
        rule_globs = _globs(tree, "rules", DEFAULT_RULE_GLOBS)
        workflow_globs = _globs(tree, "workflows", DEFAULT_WORKFLOW_GLOBS)
    for path in station_files:
        run.first_time(path)
        run.read(path)
    workflow_files = [folder / p for p in files_matching(folder, workflow_globs)]
    for path in workflow_files:
        run.first_time(path)
        run.read(path)
    workflows, problems = load_workflows(folder, workflow_globs)
    run.diagnostics += problems
    site.workflows = dict(workflows)
    site.stations = list(stations or [])
    site.rule_paths = [folder / p for p in files_matching(folder, rule_globs)]
    site.names = SiteNames(
        locations=locations,
        channels=channels,
        stations=stations,
        workflows=site.workflows if config is not None or workflows else None,
    )
    return site


# ---- rule files


def _parse_rule_file(path: Path, run: _Run) -> RuleFile | None:
    file = str(path)
    run.read(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        run.diagnostics.append(
            Diagnostic("file-unreadable", f"not UTF-8 text ({exc.reason})", Span(file))
        )
        return None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        code = "file-not-found" if isinstance(exc, FileNotFoundError) else "file-unreadable"
        message = "no such file" if code == "file-not-found" else f"cannot read: {reason}"
        run.diagnostics.append(Diagnostic(code, message, Span(file)))
        return None
    if path.suffix.lower() == ".policy":
        tree, problems = parse_policy_partial(text, file)
    elif path.suffix.lower() in (".yaml", ".yml"):
        tree, problems = parse_yaml_rules_partial(text, file)
    else:
        run.diagnostics.append(
            Diagnostic(
                "not-a-rule-file",
                "not a rule file (.policy, .yaml or .yml); skipped",
                Span(file),
                "warning",
            )
        )
        return None
    # The rules that parsed are checked even when others in the file did not.
    run.diagnostics += problems
    return RuleFile(file, text.removeprefix("\ufeff"), tree)


def _kind_of(path: Path) -> str:
    """What a file given as a PATH is: config, rules, workflow or station (by its keys)."""
    if path.name == CONFIG_FILENAME:
        return "config"
    suffix = path.suffix.lower()
    if suffix == ".policy":
        return "rules"
    if suffix == ".json":
        return "workflow"
    tree = _raw_tree(path) if suffix in (".yaml", ".yml") else None
    if isinstance(tree, Mapping):
        if "site" in tree:
            return "config"
        if "stages" in tree:
            return "workflow"
        if "rules" not in tree and "version" not in tree and "name" in tree:
            return "station"
    return "rules"


def _check_loose(path: Path, kind: str, site: _Site | None, run: _Run) -> RuleFile | None:
    """A file given as a PATH that its site's patterns do not name."""
    if kind == "workflow":
        run.read(path)
        workflow, problems = load_workflow_file(path)
        run.diagnostics += problems
        if workflow is not None and site is not None:
            site.workflows.setdefault(workflow.name, workflow)
        return None
    if kind == "station":
        run.read(path)
        try:
            tree = load_yaml(path)
        except DiagnosticError as exc:
            run.diagnostics += exc.diagnostics
            return None
        root = site.config_file.parent if site is not None else path.parent
        station, problems = validate_model(Station, tree, str(path), context={"root": root})
        run.diagnostics += problems
        known = site.names.stations if site is not None else None
        if station is not None and site is not None and known is not None:
            site.names = SiteNames(
                site.names.locations,
                site.names.channels,
                list(dict.fromkeys([*known, station.name])),
                site.names.workflows,
            )
        return None
    return _parse_rule_file(path, run)


def _check(paths: Sequence[str | Path], run: _Run) -> None:
    configs: list[Path] = []
    loose: list[tuple[Path, str]] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir() and not (path / CONFIG_FILENAME).exists():
            message = f"no {CONFIG_FILENAME} in this folder"
            hint = "a folder given to check is a config repository with its site config"
            run.diagnostics.append(Diagnostic("no-config", message, Span(str(path)), hint=hint))
        elif path.is_dir():
            configs.append(path / CONFIG_FILENAME)
        elif not path.exists():
            run.diagnostics.append(Diagnostic("file-not-found", "no such file", Span(str(path))))
        else:
            kind = _kind_of(path)
            if kind == "config":
                configs.append(path)
            else:
                loose.append((path, kind))
    folder_given = any(Path(item).expanduser().is_dir() for item in paths)
    if not configs and not folder_given:
        found = find_config()
        if found is not None:
            configs.append(found)
    if not configs and not folder_given:
        message = "no site config found: names of locations, channels and workflows are unchecked"
        run.diagnostics.append(
            Diagnostic(
                "no-config",
                message if loose else "no site config found",
                None,
                "warning" if loose else "error",
                f"give a config folder or its {CONFIG_FILENAME}, or set POLICYD_CONFIG",
            )
        )
    sites: list[_Site] = []
    done: set[Path] = set()
    for config_file in configs:
        key = config_file.absolute()
        if key in done:
            continue
        done.add(key)
        sites.append(_load_site(config_file, run))
    loose_files: list[RuleFile] = []
    for path, kind in loose:
        if run.first_time(path):
            parsed = _check_loose(path, kind, sites[0] if sites else None, run)
            if parsed is not None:
                loose_files.append(parsed)
    for index, site in enumerate(sites):
        files = [
            parsed
            for path in site.rule_paths
            if run.first_time(path) and (parsed := _parse_rule_file(path, run)) is not None
        ]
        if index == 0:
            files += loose_files
            run.rule_files = files
        names = site.names
        if names.workflows is not None or site.workflows:
            names = SiteNames(names.locations, names.channels, names.stations, site.workflows)
        run.diagnostics += run_passes(CheckContext(files, names))
    if not sites and loose_files:
        run.diagnostics += run_passes(CheckContext(loose_files, SiteNames()))


def check_site(paths: Sequence[str | Path] = ()) -> CheckResult:
    """Check a config repository: `paths` are config folders, config files or rule,
    workflow and station files; none means the usual config lookup (POLICYD_CONFIG, else
    ./policyd.yaml). Never raises."""
    run = _Run()
    try:
        with gc_paused():  # the whole run's objects live to its end (see gcpause)
            _check(paths, run)
    except RecursionError:
        run.diagnostics.append(
            Diagnostic("too-deep", "the input is nested too deeply to check", None)
        )
    except Exception as exc:  # the last resort: "never a traceback"
        run.diagnostics.append(
            Diagnostic("internal-error", f"internal error: {type(exc).__name__}: {exc}", None)
        )
    unique = list(dict.fromkeys(run.diagnostics))
    return CheckResult(sorted_diagnostics(unique), list(run.files), run.rule_files)


# ---- output


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def summary_line(result: CheckResult) -> str:
    """`N errors, M warnings in K files`."""
    return (
        f"{_plural(result.errors, 'error')}, {_plural(result.warnings, 'warning')} "
        f"in {_plural(len(result.files), 'file')}"
    )


def _as_json(diagnostic: Diagnostic) -> dict[str, object]:
    span = diagnostic.span
    return {
        "code": diagnostic.code,
        "severity": diagnostic.severity,
        "message": diagnostic.message,
        "file": span.file if span else None,
        "line": span.line if span and span.line > 0 else None,
        "col": span.col if span and span.col > 0 else None,
        "hint": diagnostic.hint,
    }


def render_check(result: CheckResult, fmt: Format = "text") -> str:
    """Text: each diagnostic with its source line and caret, then the summary line.
    JSON: a list of {code, severity, message, file, line, col, hint}, for machines."""
    if fmt == "json":
        return json.dumps([_as_json(d) for d in result.diagnostics], indent=2)
    parts = [render_all(result.diagnostics)] if result.diagnostics else []
    parts.append(summary_line(result))
    return "\n".join(parts)


def check_command(paths: Sequence[str | Path], fmt: Format = "text") -> int:
    """Print the check of `paths` to stdout; exit status 0 when there is no error, else 1."""
    result = check_site(paths)
    try:
        text = render_check(result, fmt)
    except Exception as exc:  # rendering reads source files again; never a traceback
        text = f"error: internal error while rendering: {type(exc).__name__}: {exc}"
        print(text)
        return 1
    print(text)
    return 0 if result.ok else 1
