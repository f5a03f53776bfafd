"""A recovery plan's YAML file is loaded into a Plan and checked against the site before
anything runs; a bad one is refused with a PlanError (exit code 2) naming the file, the line,
the field and the reason of every problem, on one line, never quoting the file's text.

The corpus (tests/corpus/plans/) holds one small plan per refusal, its first line a comment
saying what is wrong, and a sibling .expected file: one fragment of the message a line, a
fragment starting with ':' following the file's path directly (`<path>:<line>: <field>: ...`).
Every case is checked with require_valid against SITE below and the real templates/.
`good-*.yaml` plans must pass."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from jinja2 import DictLoader

from drbook import templating
from drbook.errors import ConfigError
from drbook.models import ProtectedItem
from drbook.plans.facts import machine_facts
from drbook.plans.load import LoadedPlan, PlanError, field_path, format_problems, list_plans, load_plan, plan_path
from drbook.plans.model import MAX_MACHINES, ManualAction, ScriptAction, WaitAction
from drbook.plans.validate import plan_problems, require_valid

CORPUS = Path(__file__).parent / "corpus" / "plans"
BAD = sorted(p.stem for p in CORPUS.glob("*.yaml") if not p.stem.startswith("good-"))
GOOD = CORPUS / "good-two-groups.yaml"
SECRET_MARK = "sekrit"  # in values of some corpus files: never in a message

# Every refusal the loader and the site checks must make has a case.
REQUIRED_CASES = {
    "yaml-tab", "yaml-unclosed-bracket", "duplicate-key", "empty", "top-level-list", "not-utf8",
    "unknown-field-machine", "top-level-field-typo", "machine-field-typo", "script-field-typo",
    "action-two-kinds", "action-no-kind", "manual-empty", "wait-zero", "wait-negative", "wait-too-long",
    "wait-not-a-number", "point-bad", "name-bad", "too-many-machines", "groups-empty", "group-no-machines",
    "direction-bad", "machine-not-a-name",
    "machine-unknown-close", "machine-unknown-far", "machine-twice-same-group", "machine-twice-other-group",
    "replication-group-split", "replication-group-missing", "group-name-twice",
    "template-unknown", "template-not-a-script", "template-ps1-on-linux", "template-sh-on-windows",
    "template-fact-undefined", "pre-on-recovered",
}


def _item(name: str, os: str = "linux", group: str | None = None) -> ProtectedItem:
    return ProtectedItem(name=name, machine=name, os=os, group=group)  # type: ignore[arg-type]


# db01 and db02 replicate as one group: they recover from one shared point.
SITE = {i.machine: i for i in [_item("db01", group="rg-db"), _item("db02", group="rg-db"), _item("app01"),
                                _item("app02"), _item("win01", "windows")]}


def _refusal(path: Path, items: dict[str, ProtectedItem] = SITE, templates: list[str] | None = None) -> str:
    with pytest.raises(PlanError) as err:
        require_valid(path, items=items, templates=templates)
    assert err.value.exit_code == 2
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(str(path)), message
    return message


def _plan_file(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the corpus -------------------------------------------------------------------------------


def test_the_corpus_has_a_case_for_every_refusal():
    assert REQUIRED_CASES <= set(BAD), sorted(REQUIRED_CASES - set(BAD))
    for case in BAD:
        assert (CORPUS / f"{case}.expected").read_text().strip(), case


@pytest.mark.parametrize("case", BAD)
def test_a_bad_plan_is_refused_with_file_line_field_and_reason(case: str):
    path = CORPUS / f"{case}.yaml"
    message = _refusal(path)
    for want in (CORPUS / f"{case}.expected").read_text().splitlines():
        want = f"{path}{want}" if want.startswith(":") else want
        assert want in message, f"{want!r} not in {message!r}"
    assert SECRET_MARK not in message


def test_every_problem_of_a_plan_is_named_on_one_line(tmp_path: Path):
    path = _plan_file(tmp_path, """\
name: lab
groups:
  - name: app
    machines: [app01, nope01, app01]
    post:
      - script: missing.sh.j2
""")
    message = _refusal(path)
    assert message.count(f"{path}:") == 3, message
    assert f"{path}:4: groups[0].machines[1]: no protected machine nope01" in message
    assert f"{path}:4: groups[0].machines[2]: app01 is listed twice" in message
    assert f"{path}:6: groups[0].post[0].script: no template missing.sh.j2" in message


def test_every_field_problem_is_named_at_once(tmp_path: Path):
    path = _plan_file(tmp_path, """\
name: Bad
groups:
  - name: app
    machines: [app01]
    post:
      - wait: 0
      - manual: ""
""")
    message = _refusal(path)
    assert f"{path}:1: name: must be 1-48" in message
    assert f"{path}:6: groups[0].post[0].wait: Input should be greater than 0" in message
    assert f"{path}:7: groups[0].post[1].manual: a manual action needs instructions" in message
    assert "Value error" not in message


def test_a_missing_plan_file_is_refused():
    path = CORPUS / "no-such-plan.yaml"
    with pytest.raises(PlanError, match="no-such-plan.yaml: file not found"):
        load_plan(path)


def test_a_plan_error_is_a_config_error_with_exit_code_2():
    assert issubclass(PlanError, ConfigError)
    assert PlanError("x").exit_code == 2


# -- a good plan ------------------------------------------------------------------------------


def test_a_realistic_two_group_plan_loads_and_passes_the_site_checks():
    loaded = require_valid(GOOD, items=SITE)
    plan = loaded.plan
    assert loaded.path == GOOD
    assert plan.name == "lab-two-tier" and plan.point == "latest-processed"
    assert [g.name for g in plan.groups] == ["db", "app"]
    assert plan.machines() == ["db01", "db02", "app01", "app02"]
    db, app = plan.groups
    assert isinstance(db.pre[0], ManualAction) and db.pre[0].directions == ["failover"]
    assert [type(a) for a in app.post] == [ScriptAction, ManualAction, WaitAction]
    script = app.post[0]
    assert isinstance(script, ScriptAction)
    assert (script.script, script.where("post"), script.timeout_s) == ("plan_check_app.sh.j2", "recovered", 300)
    assert (app.is_critical("app01"), app.is_critical("app02"), db.is_critical("db01")) == (False, True, True)
    assert plan_problems(loaded, items=SITE, templates=templating.template_names()) == []


def test_a_pre_script_on_the_source_is_accepted_and_on_is_not_a_yaml_boolean(tmp_path: Path):
    # YAML 1.1 reads `on:` as the key True and `yes` as true: a plan reads them as written.
    path = _plan_file(tmp_path, """\
name: lab
groups:
  - name: app
    machines:
      - name: app01
        critical: yes
    pre:
      - script: plan_check_app.sh.j2
        on: source
        critical: no
""")
    loaded = require_valid(path, items=SITE)
    action = loaded.plan.groups[0].pre[0]
    assert isinstance(action, ScriptAction)
    assert action.on == "source" and action.critical is False
    assert loaded.plan.groups[0].members()[0].critical is True


def test_a_plan_of_max_machines_with_a_script_passes(tmp_path: Path):
    names = [f"m{i:03d}" for i in range(MAX_MACHINES)]
    path = _plan_file(tmp_path, f"name: big\ngroups:\n  - name: all\n    machines: [{', '.join(names)}]\n"
                                "    post:\n      - script: plan_check_app.sh.j2\n")
    assert require_valid(path, items={n: _item(n) for n in names}).plan.machines() == names


# -- lines and field paths ----------------------------------------------------------------------


def test_line_of_is_the_line_of_the_key_the_item_or_the_deepest_node():
    loaded = load_plan(GOOD)
    assert loaded.line_of(()) == 2  # the first key, after the comment
    assert loaded.line_of(("groups",)) == 5
    assert loaded.line_of(("groups", 1)) == 11
    assert loaded.line_of(("groups", 1, "machines", 1, "critical")) == 16
    assert loaded.line_of(("groups", 1, "post", 0, "script")) == 18
    assert loaded.line_of(("groups", 1, "post", 2, "wait")) == 22
    assert loaded.line_of(("groups", 0, "machines", 1)) == 7  # in a flow list
    # deeper than the YAML (a field left out, an index past the end): the deepest node there is
    assert loaded.line_of(("groups", 1, "post", 0, "on")) == 18
    assert loaded.line_of(("groups", 9, "name")) == 5
    assert loaded.line_of(("nothing",)) == 2


def test_field_paths_read_as_written():
    assert field_path(("groups", 1, "post", 0, "script")) == "groups[1].post[0].script"
    assert field_path(("point",)) == "point"
    assert field_path(()) == "(top level)"


def test_a_problem_without_a_line_names_the_file_and_the_field():
    text = format_problems(Path("plans/x.yaml"), [(3, "groups[0].name", "bad\n  reason"), (None, "plan", "why")])
    assert text == "plans/x.yaml:3: groups[0].name: bad reason; plans/x.yaml: plan: why"


# -- the site checks --------------------------------------------------------------------------


def test_an_unknown_machine_lists_at_most_ten_known_names(tmp_path: Path):
    items = {f"n{i:02d}": _item(f"n{i:02d}") for i in range(15)}
    path = _plan_file(tmp_path, "name: lab\ngroups:\n  - name: g\n    machines: [zzzzzz]\n")
    message = _refusal(path, items)
    assert "no protected machine zzzzzz; protected machines: n00, n01, " in message
    assert "n09 and 5 more" in message and "n10" not in message


def test_an_unknown_machine_on_an_empty_site_says_nothing_is_protected(tmp_path: Path):
    path = _plan_file(tmp_path, "name: lab\ngroups:\n  - name: g\n    machines: [app01]\n")
    assert "the vault protects no machine" in _refusal(path, {})


def test_a_replication_group_in_one_plan_group_passes(tmp_path: Path):
    path = _plan_file(tmp_path, "name: lab\ngroups:\n  - name: db\n    machines: [db02, db01]\n"
                                "  - name: app\n    machines: [app01]\n")
    assert require_valid(path, items=SITE).plan.machines() == ["db02", "db01", "app01"]


def test_the_templates_given_are_the_ones_that_exist(tmp_path: Path):
    path = _plan_file(tmp_path, "name: lab\ngroups:\n  - name: g\n    machines: [app01]\n"
                                "    post:\n      - script: plan_check_app.sh.j2\n")
    message = _refusal(path, templates=["other.sh.j2", "other.ps1.j2", "report.html.j2"])
    assert "no template plan_check_app.sh.j2; script templates: other.ps1.j2, other.sh.j2" in message
    assert "report.html.j2" not in message


# -- rendering a plan's scripts ----------------------------------------------------------------


@pytest.fixture
def fake_templates(monkeypatch: pytest.MonkeyPatch):
    """Templates of a test's own, in drbook's real environment (its filters, StrictUndefined)."""
    real = templating.environment

    def use(templates: dict[str, str]) -> list[str]:
        def environment():
            env = real()
            env.loader = DictLoader(templates)
            return env

        monkeypatch.setattr(templating, "environment", environment)
        return sorted(templates)

    return use


def _script_plan(tmp_path: Path, script: str, directions: str = "") -> Path:
    return _plan_file(tmp_path, f"""\
name: lab
groups:
  - name: app
    machines: [app01, app02]
    post:
      - wait: 1
      - script: {script}
{directions}""")


def test_every_fact_of_a_machine_is_there_for_a_script(tmp_path: Path, fake_templates):
    facts = machine_facts(SITE["app01"], plan="lab", group="app", direction="failover")
    templates = fake_templates({"all.sh.j2": " ".join(f"{{{{ {name} | sh }}}}" for name in facts)})
    loaded = load_plan(_script_plan(tmp_path, "all.sh.j2"))
    assert {"machine", "ip", "point_id", "vm_name", "direction"} <= set(facts)
    assert plan_problems(loaded, items=SITE, templates=templates) == []


def test_a_fact_missing_in_one_direction_names_that_direction(tmp_path: Path, fake_templates):
    templates = fake_templates({"back.sh.j2": "{% if direction == 'failback' %}{{ failback_site }}{% endif %}"})
    problems = plan_problems(load_plan(_script_plan(tmp_path, "back.sh.j2")), items=SITE, templates=templates)
    assert problems == [(7, "groups[0].post[1].script",
                         "back.sh.j2 does not render for app01, app02 (failback): 'failback_site' is undefined")]


def test_a_script_is_rendered_only_for_its_directions(tmp_path: Path, fake_templates):
    templates = fake_templates({"back.sh.j2": "{% if direction == 'failback' %}{{ failback_site }}{% endif %}"})
    path = _script_plan(tmp_path, "back.sh.j2", "        directions: [test-failover, failover]\n")
    assert plan_problems(load_plan(path), items=SITE, templates=templates) == []


def test_a_fact_missing_for_one_machine_names_that_machine(tmp_path: Path, fake_templates):
    templates = fake_templates({"one.sh.j2": "{% if machine == 'app02' %}{{ app02_only }}{% endif %}"})
    message = _refusal(_script_plan(tmp_path, "one.sh.j2"), templates=templates)
    assert ":7: groups[0].post[1].script: one.sh.j2 does not render for app02 (test-failover, failover, failback): " \
           "'app02_only' is undefined" in message
    assert "app01" not in message


def test_a_template_error_never_shows_rendered_text(tmp_path: Path, fake_templates):
    templates = fake_templates({"leak.sh.j2": "RENDERED-TEXT {{ machine }} {{ ip }}\n{{ dns_server }}"})
    message = _refusal(_script_plan(tmp_path, "leak.sh.j2"), templates=templates)
    assert "'dns_server' is undefined" in message
    assert "RENDERED-TEXT" not in message and "10.0.0.4" not in message


def test_a_template_syntax_error_or_a_crash_is_a_problem_not_a_crash(tmp_path: Path, fake_templates):
    templates = fake_templates({"syntax.sh.j2": "{% if %}", "crash.sh.j2": "{{ 1 // 0 }}"})
    message = _refusal(_script_plan(tmp_path, "syntax.sh.j2"), templates=templates)
    assert "syntax.sh.j2 does not render: line 1: " in message
    message = _refusal(_script_plan(tmp_path, "crash.sh.j2"), templates=templates)
    assert "crash.sh.j2 does not render for app01, app02 (test-failover, failover, failback): " \
           "ZeroDivisionError" in message


def test_the_plan_check_template_is_a_valid_shell_script_with_quoted_facts():
    hostile = "app'; touch /tmp/drbook-pwned #\nreboot"
    for direction in ("test-failover", "failover", "failback"):
        facts = machine_facts(SITE["app01"], plan="lab", group=hostile, direction=direction)
        script = templating.render("plan_check_app.sh.j2", **facts)
        assert script.startswith("#!/bin/sh\n")
        assert shlex.quote(hostile) in script
        assert "\nreboot" not in script.replace(shlex.quote(hostile), "")
        assert "hostname" in script and shlex.quote(facts["ip"]) in script
        checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, timeout=10)
        assert checked.returncode == 0, checked.stderr


# -- finding a plan ---------------------------------------------------------------------------


@pytest.fixture
def plans_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plans"
    folder.mkdir()
    for name in ("web.yaml", "db.yml", "notes.txt"):
        (folder / name).write_text("name: x\n")
    (folder / "old.yaml").mkdir()  # a folder is not a plan
    return folder


def test_list_plans_lists_the_yaml_files_by_name(plans_dir: Path, tmp_path: Path):
    assert list_plans(plans_dir) == [plans_dir / "db.yml", plans_dir / "web.yaml"]
    assert list_plans(tmp_path / "nowhere") == []


def test_a_plan_is_found_by_name_or_by_path(plans_dir: Path):
    assert plan_path("web", plans_dir) == plans_dir / "web.yaml"
    assert plan_path("db", plans_dir) == plans_dir / "db.yml"
    assert plan_path(str(GOOD), plans_dir) == GOOD


def test_an_unknown_plan_names_the_folder_and_its_plans(plans_dir: Path, tmp_path: Path):
    with pytest.raises(PlanError) as err:
        plan_path("wbe", plans_dir)
    assert str(err.value) == f"no plan named 'wbe' in {plans_dir} (it holds db, web)"
    assert err.value.exit_code == 2
    with pytest.raises(PlanError, match="it holds no plans"):
        plan_path("web", tmp_path / "nowhere")
    with pytest.raises(PlanError, match="no such plan file"):
        plan_path(str(plans_dir / "gone.yaml"), plans_dir)


def test_a_loaded_plan_keeps_its_path(tmp_path: Path):
    path = _plan_file(tmp_path, "name: lab\ngroups:\n  - name: g\n    machines: [app01]\n")
    loaded = load_plan(path)
    assert isinstance(loaded, LoadedPlan) and loaded.path == path and loaded.plan.machines() == ["app01"]


def test_an_unknown_key_long_enough_to_be_a_pasted_secret_is_not_shown(tmp_path: Path):
    path = _plan_file(tmp_path, f"name: lab\n{SECRET_MARK}-0123456789abcdefghij: x\ngroups:\n"
                                "  - name: g\n    machines: [app01]\n")
    message = _refusal(path)
    assert f"{path}:2: …: unknown field: the fields here are " in message
    assert SECRET_MARK not in message


def test_a_top_level_scalar_is_refused_without_quoting_it(tmp_path: Path):
    path = _plan_file(tmp_path, f"# a pasted token\n{SECRET_MARK}-token-value\n")
    message = _refusal(path)
    assert message == f"{path}:2: (top level): a plan is a mapping (name, groups, ...), not a string"
