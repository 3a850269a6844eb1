"""Workflow files: the DM's shape loads as it is, mistakes are found at their place,
and conditions are evaluated by a parser that can do nothing but compare literals."""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.diagnostics import Diagnostic, Span
from policyd.rules.workflows import (
    ConditionError,
    Workflow,
    check_variables,
    condition_holds,
    evaluate_condition,
    load_workflow_data,
    load_workflow_file,
    load_workflows,
    natural_key,
    parse_condition,
    render_condition,
    substitute_command,
)

SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "dm-service-samples.json").read_text())

XPCS = """\
name: xpcs-8idi
owner: 8idi
stages:
  01-stage:
    command: "stage-input.sh $filePath $outputRootDir"
    outputVariableRegexList: ["Created processing output dir: (?P<outputDir>.*)"]
  02-process:
    command: "xpcs-correlate $filePath --qmap $qmap --out $outputDir"
"""

# The tomo-demo-01 workflow of the 2018 APS DM talk, as the DM service holds it.
TOMO: dict[str, Any] = {
    "name": "tomo-demo-01",
    "description": "Tomo Demo 01 Workflow",
    "owner": "pelmer",
    "stages": {
        "1-Startup": {
            "command": "/home/dm/workflows/tomo-01/start-tomo-01.sh $filePath $outputRootDir",
            "outputVariableRegexList": [
                "Created processing output dir: (?P<outputDir>.*)",
                "File number: (?P<fileNumber>.*)",
            ],
        },
        "2-Process": {
            "command": 'ssh txmtwo "source /home/dm/etc/dm.setup.sh > /dev/null;\n'
            '  /home/dm/workflows/tomo-01/tomo-01.py $filePath $outputDir"'
        },
        "3-Upload": {
            "command": "source /home/dm/etc/dm.setup.sh > /dev/null;\n"
            "  dm-32id-upload --experiment=$experimentName --data-directory=$outputDir\n"
            "  --dest-directory=processed/$fileNumber parentFile:$experimentFilePath"
        },
    },
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load_ok(path: Path) -> Workflow:
    workflow, problems = load_workflow_file(path)
    assert workflow is not None, problems
    assert problems == []
    return workflow


def codes(problems: list[Diagnostic]) -> list[str]:
    return [d.code for d in problems]


# ---------------------------------------------------------------------------
# the DM's own shape


def test_dm_sample_workflow_loads_unchanged() -> None:
    data = SAMPLES["workflow"]
    workflow, problems = load_workflow_data(data, "dm.json")
    assert problems == []
    assert workflow is not None
    assert list(workflow.stages) == [
        "01-START",
        "02-MKDIR",
        "03-ECHO",
        "04-MD5SUM",
        "05-ECHO",
        "06-DONE",
    ]
    assert workflow.model_extra == {"userAccount": "dummy_user", "id": "69f0c0b14409b1a741854be6"}
    assert workflow.to_dm() == data
    assert workflow.stages["01-START"].output_variables() == ["timeStamp"]
    assert check_variables(workflow) == []


def test_dm_sample_workflow_loads_from_its_json_file(tmp_path: Path) -> None:
    path = write(tmp_path, "example-01.json", json.dumps(SAMPLES["workflow"], indent=2))
    workflow = load_ok(path)
    assert workflow.to_dm() == SAMPLES["workflow"]


def test_a_dm_job_record_workflow_keeps_the_keys_the_dm_added() -> None:
    data = SAMPLES["failed_job"]["workflow"]
    workflow, problems = load_workflow_data(data, "job.json")
    assert problems == []
    assert workflow is not None
    assert list(workflow.stages) == ["010-START", "020-FIT_FLUORESCENCE", "030-EXPORT"]
    assert workflow.model_extra == {
        "id": "6a03718401668a9aaf71ba47",
        "userAccount": "s25idcuser",
        "version": 1,
    }
    assert workflow.stages["030-EXPORT"].model_extra is not None
    assert workflow.stages["030-EXPORT"].model_extra["nFailedChildProcesses"] == 1
    assert workflow.to_dm() == data
    # The DM job got run_uid and target_folder as job arguments, as a run rule's `with` does.
    assert check_variables(workflow, {"run_uid", "target_folder"}) == []
    assert codes(check_variables(workflow)) == ["undefined-variable"] * 3


def test_tomo_demo_workflow_from_the_2018_talk() -> None:
    workflow, problems = load_workflow_data(TOMO, "tomo.json")
    assert problems == [] and workflow is not None
    assert list(workflow.stages) == ["1-Startup", "2-Process", "3-Upload"]
    assert check_variables(workflow, {"outputRootDir"}) == []
    assert workflow.stages["1-Startup"].extract_variables(
        "hello\nCreated processing output dir: /gdata/out/7\nFile number: 12\n"
    ) == {"outputDir": "/gdata/out/7", "fileNumber": "12"}


# ---------------------------------------------------------------------------
# order


def test_stages_run_in_natural_order_of_their_keys() -> None:
    data = {
        "name": "w",
        "owner": "o",
        "stages": {"2-a": {"command": "a"}, "10-b": {"command": "b"}, "1-c": {"command": "c"}},
    }
    workflow, problems = load_workflow_data(data)
    assert problems == [] and workflow is not None
    assert list(workflow.stages) == ["1-c", "2-a", "10-b"]
    assert [key for key, _ in workflow.stage_items()] == ["1-c", "2-a", "10-b"]


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["10-x", "2-x"], ["2-x", "10-x"]),
        (["02-MKDIR", "01-START"], ["01-START", "02-MKDIR"]),
        (["b", "a10", "a9", "9"], ["9", "a9", "a10", "b"]),
        (["1-a", "01-a"], ["01-a", "1-a"]),  # same number: the text decides, never dict order
        (["stage-2-b", "stage-10-a"], ["stage-2-b", "stage-10-a"]),
    ],
)
def test_natural_key(keys: list[str], expected: list[str]) -> None:
    assert sorted(keys, key=natural_key) == expected


# ---------------------------------------------------------------------------
# variables


def test_spec_xpcs_example_passes(tmp_path: Path) -> None:
    workflow = load_ok(write(tmp_path, "workflows/xpcs.yaml", XPCS))
    assert list(workflow.stages) == ["01-stage", "02-process"]
    assert check_variables(workflow, {"qmap", "outputRootDir"}) == []


def test_variables_a_run_rule_does_not_provide_are_reported(tmp_path: Path) -> None:
    workflow = load_ok(write(tmp_path, "xpcs.yaml", XPCS))
    problems = check_variables(workflow)
    assert [(d.message, str(d.span)) for d in problems] == [
        (
            "stage '01-stage': command uses $outputRootDir, which is not defined before this stage",
            f"{tmp_path / 'xpcs.yaml'}:5:40",
        ),
        (
            "stage '02-process': command uses $qmap, which is not defined before this stage",
            f"{tmp_path / 'xpcs.yaml'}:8:47",
        ),
    ]


def test_variable_used_before_the_stage_that_defines_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "xpcs.yaml",
        """\
        name: xpcs-8idi
        owner: 8idi
        stages:
          01-process:
            command: "xpcs-correlate $filePath --qmap $qmap --out $outputDir"
          02-stage:
            command: "stage-input.sh $filePath $outputRootDir"
            outputVariableRegexList: ["Created processing output dir: (?P<outputDir>.*)"]
        """,
    )
    workflow = load_ok(path)
    problems = check_variables(workflow, {"qmap", "outputRootDir"})
    assert len(problems) == 1
    diag = problems[0]
    assert diag.code == "undefined-variable"
    assert diag.message == (
        "stage '01-process': command uses $outputDir, which is not defined before this stage"
    )
    assert diag.span == Span(str(path), 5, 59)
    assert diag.hint == "stage '02-stage' defines it, but runs later"
    assert diag.render().startswith(f"{path}:5:59: error: stage '01-process': command uses")


def test_variables_in_every_checked_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.yaml",
        """\
        name: poll
        owner: 8idi
        stages:
          1-submit:
            command: submit $filePath
            outputVariableRegexList: ['Job (?P<jobId>\\d+)']
          2-wait:
            command: status ${jobId}
            workingDir: /scratch/${jobId}
            outputVariableRegexList: ['State: (?P<state>\\w+)']
            runIf: '"$filepath" != "skip" and "$state" != "done"'
            repeatPeriod: 30
            repeatUntil: '"$state" == "done"'
            maxRepeats: 10
          3-fetch:
            command: fetch $jobid
        """,
    )
    workflow = load_ok(path)
    assert workflow.stages["2-wait"].repeat_period == 30
    assert workflow.stages["2-wait"].max_repeats == 10
    problems = check_variables(workflow)
    # repeatUntil runs after its own stage, so `state` is defined there; runIf runs before.
    assert [(d.message, d.span.line if d.span else 0, d.hint) for d in problems] == [
        (
            "stage '2-wait': runIf uses $filepath, which is not defined before this stage",
            11,
            "did you mean $filePath?",
        ),
        (
            "stage '2-wait': runIf uses $state, which is not defined before this stage",
            11,
            "this stage defines it, but only once it has run (its repeatUntil may use it)",
        ),
        (
            "stage '3-fetch': command uses $jobid, which is not defined before this stage",
            16,
            "did you mean $jobId?",
        ),
    ]
    assert problems[2].span == Span(str(path), 16, 20)


def test_variable_position_in_a_multi_line_command(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.yaml",
        """\
        name: w
        owner: o
        stages:
          1-a:
            command: >
              first $filePath
              then $nowhere
        """,
    )
    workflow = load_ok(path)
    [diag] = check_variables(workflow)
    assert diag.span == Span(str(path), 7, 12)


# ---------------------------------------------------------------------------
# structure and types


def test_missing_and_wrong_keys_are_located(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.yaml",
        """\
        name: w
        stages:
          1-a:
            workingDir: /tmp
          2-b:
            command: ok
            timeout: 1 hour
            parallelExec: "yes"
            maxRepeats: 0
        """,
    )
    workflow, problems = load_workflow_file(path)
    assert workflow is None
    assert sorted((d.code, d.message, d.span.line, d.span.col) for d in problems if d.span) == [
        ("bad-value", "stages.2-b.maxRepeats: must be at least 1, got the number 0", 9, 17),
        ("missing-key", "missing required top-level key 'owner'", 1, 1),
        ("missing-key", "stages.1-a: missing required key 'command'", 3, 3),
        ("wrong-type", "stages.2-b.parallelExec: expected true or false, got text 'yes'", 8, 19),
        ("wrong-type", "stages.2-b.timeout: expected a number, got text '1 hour'", 7, 14),
    ]


@pytest.mark.parametrize("bad", [0, -5, True, "30", float("inf"), [1]])
def test_timeout_is_a_positive_number_of_seconds(bad: object) -> None:
    data = {"name": "w", "owner": "o", "stages": {"1": {"command": "x", "timeout": bad}}}
    workflow, problems = load_workflow_data(data, "w.json")
    assert workflow is None
    assert codes(problems)[0] in {"wrong-type", "bad-value"}


@pytest.mark.parametrize(
    "data",
    [None, [], "text", 3, {"name": "w", "owner": "o", "stages": {}}, {"name": "w", "owner": "o"}],
)
def test_load_workflow_data_never_raises(data: object) -> None:
    workflow, problems = load_workflow_data(data, "w.json")
    assert workflow is None and problems


def test_unreadable_files_are_diagnostics(tmp_path: Path) -> None:
    assert codes(load_workflow_file(tmp_path / "none.yaml")[1]) == ["file-not-found"]
    assert codes(load_workflow_file(write(tmp_path, "a.yaml", "a: ["))[1]) == ["yaml-syntax"]
    broken = write(tmp_path, "b.json", '{"name": "w",\n\t"owner": }')
    [diag] = load_workflow_file(broken)[1]
    assert diag.code == "json-syntax"
    assert diag.render() == f"{broken}:2:11: error: invalid JSON: Expecting value"
    tabbed = write(
        tmp_path, "c.json", '{"name":\t"w", "owner": "o", "stages": {"1": {"command": 3}}}'
    )
    assert codes(load_workflow_file(tabbed)[1]) == ["wrong-type"]
    twice = write(tmp_path, "d.json", '{"name": "w", "name": "v"}')
    assert codes(load_workflow_file(twice)[1]) == ["duplicate-key"]


def test_misspelt_stage_key_is_kept_but_warned_about(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.yaml",
        """\
        name: w
        owner: o
        stages:
          1-a:
            command: x
            runif: "1 == 1"
        """,
    )
    workflow, problems = load_workflow_file(path)
    assert workflow is not None
    assert [(d.code, d.severity, d.hint, d.span) for d in problems] == [
        ("suspicious-key", "warning", "did you mean 'runIf'?", Span(str(path), 6, 5))
    ]


# ---------------------------------------------------------------------------
# regexes, conditions, repeats


def test_bad_regexes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.yaml",
        """\
        name: w
        owner: o
        stages:
          1-a:
            command: x
            outputVariableRegexList:
              - "dir: (?P<outputDir>.*"
              - "dir: (.*)"
              - "(?P<ok>.*)"
        """,
    )
    workflow, problems = load_workflow_file(path)
    assert workflow is None
    assert [(d.code, d.message, d.span) for d in problems] == [
        (
            "bad-regex",
            "stage '1-a': outputVariableRegexList[0]: invalid regular expression: "
            "missing ), unterminated subpattern",
            Span(str(path), 7, 15),  # at the unclosed group
        ),
        (
            "bad-regex",
            "stage '1-a': outputVariableRegexList[1]: the regular expression has no named "
            "group, so it defines no variable",
            Span(str(path), 8, 9),
        ),
    ]


def test_bad_condition_is_located_inside_the_string(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "w.yaml",
        """\
        name: w
        owner: o
        stages:
          1-a:
            command: x
            runIf: '"mda" in "$filePath" and __import__("os")'
        """,
    )
    workflow, problems = load_workflow_file(path)
    assert workflow is None
    [diag] = problems
    assert diag.code == "bad-condition"
    assert diag.message.startswith("stage '1-a': runIf: unknown name '__import__'")
    assert diag.span == Span(str(path), 6, 38)


def test_conditions_with_bare_variables_are_checked_as_written() -> None:
    data = {
        "name": "w",
        "owner": "o",
        "stages": {"1": {"command": "x", "runIf": "$fileSize > 1000 and not ${station} == 'x'"}},
    }
    workflow, problems = load_workflow_data(data)
    assert problems == [] and workflow is not None


@pytest.mark.parametrize(
    ("stage", "key"),
    [
        ({"command": "x", "repeatPeriod": 10}, "repeatPeriod"),
        ({"command": "x", "repeatUntil": "1 == 1"}, "repeatUntil"),
    ],
)
def test_repeat_needs_both_period_and_until(stage: dict[str, Any], key: str) -> None:
    workflow, problems = load_workflow_data({"name": "w", "owner": "o", "stages": {"1": stage}})
    assert workflow is None
    [diag] = problems
    assert diag.code == "repeat-needs-until"
    assert diag.message.startswith(f"stage '1': {key} needs ")


# ---------------------------------------------------------------------------
# several files


def test_duplicate_workflow_names(tmp_path: Path) -> None:
    write(tmp_path, "workflows/a.yaml", XPCS)
    second = write(tmp_path, "workflows/b.yaml", XPCS.replace("owner: 8idi", "owner: someone"))
    write(tmp_path, "workflows/c.yaml", "name: other\nowner: o\nstages: {1-a: {command: x}}\n")
    workflows, problems = load_workflows(tmp_path, ["workflows/*.yaml"])
    assert sorted(workflows) == ["other", "xpcs-8idi"]
    assert workflows["xpcs-8idi"].owner == "8idi"
    [diag] = problems
    assert diag.code == "duplicate-workflow"
    assert diag.message == (
        f"workflow 'xpcs-8idi' is already defined in {tmp_path / 'workflows' / 'a.yaml'}:1:7"
    )
    assert diag.span == Span(str(second), 1, 7)


def test_load_workflows_reports_every_file(tmp_path: Path) -> None:
    write(tmp_path, "workflows/bad.yaml", "name: w\nowner: o\nstages: {1: {command: 3}}\n")
    workflows, problems = load_workflows(tmp_path, ["workflows/*.yaml", "workflows/gone.yaml"])
    assert workflows == {}
    assert sorted(codes(problems)) == ["file-not-found", "wrong-type", "wrong-type"]


# ---------------------------------------------------------------------------
# the condition language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"mda" in "/data/x.mda"', True),
        ('"tif" in "/data/x.mda"', False),
        ('1 < 2 and not ("a" == "b")', True),
        ("1 < 2 < 3", True),
        ("3 > 2 > 2", False),
        ('"x" not in ["a", "b"]', True),
        ('"a" in ["a", "b"] or 1 / 0', True),  # never reached: `or` stops at the first truth
        ("not not True", True),
        ("-1.5e2 <= -150", True),
        ("None == None", True),
        ("null != false", True),
        ("'it\\'s' == \"it's\"", True),
        ('""', False),
        ("(1 == 1) == True", True),
        ("[] == []", True),
    ],
)
def test_valid_conditions(text: str, expected: bool) -> None:
    if "1 / 0" in text:  # `/` is not in the language, even where it would not run
        with pytest.raises(ConditionError):
            parse_condition(text)
        return
    assert evaluate_condition(parse_condition(text)) is expected


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ('__import__("os")', "unknown name '__import__'", 0),
        ('open("x")', "unknown name 'open'", 0),
        ("a.b", "unknown name 'a'", 0),
        ("1 +", "unexpected character '+'", 2),
        ("1 <", "expected a value, but the condition ends", 3),
        ("(1 == 1", "expected ')' but the condition ends", 7),
        ('"abc', "text opened here is never closed", 0),
        ("1 = 1", "'=' is not a comparison; use '=='", 2),
        ("1 2", "unexpected '2'", 2),
        ("$filePath == 'x'", "variable $filePath was not substituted", 0),
        ("", "expected a value, but the condition ends", 0),
        ("- 'a'", "'-' must come before a number", 0),
        ("1if", "'1i'... is not a number", 0),
        ("(" * 100 + "1" + ")" * 100, "nested more than 64 deep", 64),
        ("9" * 5000, "number is too long", 0),
    ],
)
def test_invalid_conditions(text: str, message: str, offset: int) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert caught.value.message.startswith(message)
    assert caught.value.offset == offset


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"a" < 1', "cannot order text and a number with '<'"),
        ("1 in 2", "'in' needs text or a list on its right, got a number"),
        ('1 in "123"', "'in' text needs text on its left, got a number"),
        ("None > 1", "cannot order None and a number with '>'"),
    ],
)
def test_evaluation_errors_are_condition_errors(text: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        evaluate_condition(parse_condition(text))


def test_render_condition_keeps_values_values() -> None:
    variables = {"filePath": '/data/a" or "1.mda', "fileSize": "2048", "station": "8IDI or True"}
    rendered = render_condition('"mda" in "$filePath" and $fileSize > 1000', variables)
    assert rendered == '"mda" in "/data/a\\" or \\"1.mda" and 2048 > 1000'
    assert condition_holds('"mda" in "$filePath" and $fileSize > 1000', variables)
    assert not condition_holds("$station == True", variables)  # a text, not an `or`
    assert condition_holds("'${station}' == \"8IDI or True\"", variables)
    with pytest.raises(ConditionError, match=r"variable \$missing was not substituted"):
        condition_holds("$missing == 1", variables)


def test_substitute_command_quotes_for_the_shell() -> None:
    command = substitute_command(
        "xpcs $filePath --out ${outputDir}/x $HOME", {"filePath": "a; rm -rf x", "outputDir": "/o"}
    )
    assert command == "xpcs 'a; rm -rf x' --out /o/x $HOME"


@given(st.text(max_size=80))
def test_random_text_never_raises_anything_else(text: str) -> None:
    for allow in (False, True):
        try:
            tree = parse_condition(text, allow_variables=allow)
        except ConditionError:
            continue
        with contextlib.suppress(ConditionError):
            assert evaluate_condition(tree) in (True, False)


CONDITION_PIECES = [
    '"a"',
    "'b'",
    "1",
    "-2",
    "3.5",
    "True",
    "None",
    "[",
    "]",
    ",",
    "(",
    ")",
    "==",
    "!=",
    "<",
    ">=",
    "in",
    "not",
    "and",
    "or",
    "$x",
    "${y}",
    "\\",
    '"',
    "'",
    " ",
    "$",
    "1e9",
]


@given(
    st.lists(st.sampled_from(CONDITION_PIECES), max_size=25).map(" ".join),
    st.text(max_size=10),
)
def test_near_valid_conditions_with_hostile_values(text: str, value: str) -> None:
    with contextlib.suppress(ConditionError):
        condition_holds(text, {"x": value, "y": value})
