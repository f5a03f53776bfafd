"""The rules of a plan that need the site: its machines (the vault's protected items), their
replication groups, and the script templates. Each problem is refused with its line, before
anything of the plan runs.

A script is checked by rendering it, for every machine of its group and every direction it
applies to, with the facts it will get (drbook.plans.facts; sample values for those known
only once the machine is up): a template naming a fact that does not exist is refused now,
not halfway through a failover. Rendered text is never shown (it holds site details)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

from jinja2 import TemplateError, TemplateSyntaxError

from drbook import templating
from drbook.models import ProtectedItem
from drbook.plans.facts import machine_facts
from drbook.plans.load import LoadedPlan, PlanError, Problem, field_path, format_problems, load_plan
from drbook.plans.model import PlanGroup, ScriptAction

SCRIPT_KINDS = {".sh.j2": "linux", ".ps1.j2": "windows"}
_MAX_NAMES = 10


def require_valid(path: Path, *, items: dict[str, ProtectedItem], templates: list[str] | None = None) -> LoadedPlan:
    """The plan at `path`, loaded and checked against the site; a PlanError naming every problem."""
    loaded = load_plan(path)
    names = templating.template_names() if templates is None else templates
    if problems := plan_problems(loaded, items=items, templates=names):
        raise PlanError(format_problems(loaded.path, problems))
    return loaded


def plan_problems(loaded: LoadedPlan, *, items: dict[str, ProtectedItem], templates: list[str]) -> list[Problem]:
    """(line, field path, reason) of every rule the plan breaks; `items` by machine name."""
    return [*_group_name_problems(loaded), *_machine_problems(loaded, items),
            *_replication_group_problems(loaded, items), *_action_problems(loaded, items, templates)]


def _problem(loaded: LoadedPlan, loc: tuple[str | int, ...], reason: str) -> Problem:
    return loaded.line_of(loc), field_path(loc), reason


def _group_name_problems(loaded: LoadedPlan) -> Iterator[Problem]:
    first: dict[str, int] = {}
    for gi, group in enumerate(loaded.plan.groups):
        if group.name in first:
            other = first[group.name]
            yield _problem(loaded, ("groups", gi, "name"),
                           f"group {group.name} is named twice: also groups[{other}] "
                           f"(line {loaded.line_of(('groups', other, 'name'))}); group names must be unique")
        first.setdefault(group.name, gi)


# -- machines -------------------------------------------------------------------------------


def _members(loaded: LoadedPlan) -> Iterator[tuple[tuple[str | int, ...], PlanGroup, str]]:
    """(location, plan group, machine name) of every machine the plan lists, in order."""
    for gi, group in enumerate(loaded.plan.groups):
        for mi, member in enumerate(group.members()):
            yield ("groups", gi, "machines", mi), group, member.name


def _machine_problems(loaded: LoadedPlan, items: dict[str, ProtectedItem]) -> Iterator[Problem]:
    first: dict[str, tuple[str | int, ...]] = {}
    for loc, _group, name in _members(loaded):
        if name not in items:
            yield _problem(loaded, loc, f"no protected machine {name}; {_known(name, items)}")
        if name in first:
            yield _problem(loaded, loc, f"{name} is listed twice: at lines {loaded.line_of(first[name])} "
                                        f"and {loaded.line_of(loc)} ({field_path(first[name])} and "
                                        f"{field_path(loc)}); a machine recovers once")
        first.setdefault(name, loc)


def _known(name: str, items: dict[str, ProtectedItem]) -> str:
    if close := difflib.get_close_matches(name, list(items), n=3):
        return f"did you mean {' or '.join(close)}?"
    if not items:
        return "the vault protects no machine (drbook protect MACHINE)"
    names = sorted(items)
    more = f" and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else ""
    return f"protected machines: {', '.join(names[:_MAX_NAMES])}{more}"


def _replication_group_problems(loaded: LoadedPlan, items: dict[str, ProtectedItem]) -> Iterator[Problem]:
    """A replication group's members share their recovery points: they recover from one
    point, so all of them, in one plan group."""
    placed: dict[str, dict[str, tuple[tuple[str | int, ...], PlanGroup]]] = {}  # rep group -> machine -> where
    for loc, group, name in _members(loaded):
        item = items.get(name)
        if item is not None and item.group:
            placed.setdefault(item.group, {}).setdefault(name, (loc, group))
    for rep_group, where in placed.items():
        first_loc = next(iter(where.values()))[0]
        plan_groups = {group.name for _loc, group in where.values()}
        if len(plan_groups) > 1:
            split = ", ".join(f"{name} in group {group.name}" for name, (_loc, group) in where.items())
            yield _problem(loaded, first_loc, f"replication group {rep_group} is split: {split}; its members "
                                              "recover from one shared point, so they must be in one plan group")
        missing = sorted(name for name, item in items.items() if item.group == rep_group and name not in where)
        if missing:
            yield _problem(loaded, first_loc, f"replication group {rep_group}: {', '.join(missing)} not in the plan "
                                              f"(it has {', '.join(where)}); its members recover from one shared "
                                              "point, so all of them must be in the plan, in one plan group")


# -- actions --------------------------------------------------------------------------------


def _action_problems(loaded: LoadedPlan, items: dict[str, ProtectedItem], templates: list[str]) -> Iterator[Problem]:
    for gi, group in enumerate(loaded.plan.groups):
        for phase in ("pre", "post"):
            for ai, action in enumerate(getattr(group, phase)):
                if not isinstance(action, ScriptAction):
                    continue
                loc = ("groups", gi, phase, ai)
                if phase == "pre" and action.on == "recovered":
                    yield _problem(loaded, (*loc, "on"), _PRE_ON_RECOVERED)
                yield from _script_problems(loaded, loc, group, action, items, templates)


_PRE_ON_RECOVERED = ("a pre action runs before its group recovers, when there is no recovered VM to run "
                     "on: give `on: source` (or leave `on` out: a pre action runs on the source)")


def _script_problems(loaded: LoadedPlan, loc: tuple[str | int, ...], group: PlanGroup, action: ScriptAction,
                     items: dict[str, ProtectedItem], templates: list[str]) -> Iterator[Problem]:
    name = action.script
    where = (*loc, "script")
    kind = next((suffix for suffix in SCRIPT_KINDS if name.endswith(suffix)), None)
    scripts = sorted(t for t in templates if t.endswith(tuple(SCRIPT_KINDS)))
    if name not in templates:
        yield _problem(loaded, where, f"no template {name}; script templates: {', '.join(scripts) or 'none'}")
        return
    if kind is None:
        yield _problem(loaded, where, f"{name} is not a script template (.sh.j2 or .ps1.j2); "
                                      f"script templates: {', '.join(scripts) or 'none'}")
        return
    machines = [(m.name, items[m.name]) for m in group.members() if m.name in items]
    for machine, item in machines:
        if item.os != SCRIPT_KINDS[kind]:
            other = next(s for s, os_ in SCRIPT_KINDS.items() if os_ == item.os)
            yield _problem(loaded, where, f"{machine} is a {item.os} machine: a {kind} script cannot run "
                                          f"on it (a {other} template can)")
    for reason in _render_problems(loaded, group, action, machines):
        yield _problem(loaded, where, reason)


def _render_problems(loaded: LoadedPlan, group: PlanGroup, action: ScriptAction,
                     machines: list[tuple[str, ProtectedItem]]) -> list[str]:
    """Why the template does not render, one reason per distinct error, naming the machines
    and directions it failed for; never the rendered text."""
    # templating.render, with the template compiled once rather than per machine and direction
    try:
        template = templating.environment().get_template(action.script)
    except Exception as exc:  # a syntax error: the same for every machine
        return [f"{action.script} does not render: {_render_error(exc)}"]
    failures: dict[str, tuple[list[str], list[str]]] = {}  # error -> (machines, directions)
    for machine, item in machines:
        for direction in action.directions:
            facts = machine_facts(item, plan=loaded.plan.name, group=group.name, direction=direction, run=None)
            try:
                template.render(**facts)
            except Exception as exc:  # a template's bug of any kind is the plan's problem, not a crash
                error = _render_error(exc)
                who, when = failures.setdefault(error, ([], []))
                if machine not in who:
                    who.append(machine)
                if direction not in when:
                    when.append(direction)
    return [f"{action.script} does not render for {', '.join(who)} ({', '.join(when)}): {error}"
            for error, (who, when) in failures.items()]


def _render_error(exc: Exception) -> str:
    if isinstance(exc, TemplateSyntaxError):  # its str() adds the template's source line
        return f"line {exc.lineno}: {exc.message}"
    return str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
