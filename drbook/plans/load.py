"""Reading a recovery plan's YAML file (plans/*.yaml) into a Plan, refusing a bad one with
the file, the line and the reason of every problem, on one line:

    plans/lab.yaml:14: groups[1].post[0].manual: a manual action needs instructions: ...

The file's own problems (missing, not UTF-8, not YAML, a key twice) are worded as for the
site config (drbook.config.read_yaml). Like there, an error never quotes the file's text,
which may hold a pasted secret: only the names the plan defines (machines, templates,
groups) and its field names."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from drbook.config import _UniqueKeyLoader, _yaml_problem, read_yaml
from drbook.errors import ConfigError
from drbook.failover.points import KEYWORDS
from drbook.plans.model import ManualAction, Plan, PlanGroup, PlanMachine, ScriptAction, WaitAction

Loc = tuple[str | int, ...]
Problem = tuple[int | None, str, str]  # (line, field path, reason)

PLAN_SUFFIXES = (".yaml", ".yml")

# Segments pydantic puts in an error's location for the member of a union it tried: the
# action kind after an index into `pre` / `post`, the type after an index into `machines`.
_ACTION_MODELS: dict[str, type[BaseModel]] = {"script": ScriptAction, "manual": ManualAction, "wait": WaitAction}
_MACHINE_MEMBERS = ("str", "PlanMachine")
_POINT_RULE = (f"must be {', '.join(KEYWORDS)} or a recovery point id (pt-YYYYMMDDhhmmss-xxxxxxxx; "
               "`drbook points MACHINE` lists them)")
_MAX_SHOWN_KEY = 24
_TYPE_WORDS = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true or false"}


class PlanError(ConfigError):
    """A plan file that cannot be used: its message is one line, every problem with its line."""


@dataclass
class LoadedPlan:
    plan: Plan
    path: Path
    node: yaml.Node | None = field(default=None, repr=False)  # the composed YAML: the lines of the fields

    def line_of(self, loc: Loc) -> int | None:
        return line_of(self.node, loc)


def line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the YAML node at a field path: of the key, for a mapping's entry;
    for a path deeper than the YAML (a missing field), of the deepest node that exists."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for seg in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(seg)), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) and 0 <= seg < len(node.value):
            node = node.value[seg]
            line = node.start_mark.line + 1
        else:
            break
    return line


def field_path(loc: Loc) -> str:
    """('groups', 1, 'post', 0, 'script') -> 'groups[1].post[0].script'."""
    text = ""
    for seg in loc:
        text += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if text else str(seg))
    return text or "(top level)"


def format_problems(path: Path, problems: Iterable[Problem]) -> str:
    """One line (the CLI's errors are one line): `<file>:<line>: <field>: <why>; ...`."""
    return "; ".join(f"{path}:{line}: {where}: {' '.join(why.split())}" if line is not None
                     else f"{path}: {where}: {' '.join(why.split())}"
                     for line, where, why in problems)


# -- reading --------------------------------------------------------------------------------


def load_plan(path: Path) -> LoadedPlan:
    """A plan file as a Plan; every problem of the file or of its fields is a PlanError."""
    path = Path(path)
    data, node = _document(path)
    if node is None or data is None:
        raise PlanError(f"{path}: empty (no YAML document in it)")
    if not isinstance(data, dict):
        what = _TYPE_WORDS.get(type(data), f"a {type(data).__name__}")
        raise PlanError(f"{path}:{line_of(node, ())}: (top level): a plan is a mapping "
                        f"(name, groups, ...), not {what}")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(format_problems(path, _validation_problems(exc, data, node))) from None
    return LoadedPlan(plan=plan, path=path, node=node)


def _document(path: Path) -> tuple[object, yaml.Node | None]:
    """The file's YAML document and its node tree (for the lines), both from one parse."""
    try:
        read_yaml(path)  # refuses the file as a site config is refused: missing, not UTF-8, not YAML, a key twice
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    loader = _PlanLoader(path.read_bytes().decode("utf-8"))
    try:
        node = loader.get_single_node()
        return (None if node is None else loader.construct_document(node)), node
    except yaml.YAMLError as exc:  # a key twice only with YAML 1.2's booleans, or the file changed
        raise PlanError(f"{path}: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


class _PlanLoader(_UniqueKeyLoader):
    """YAML 1.2's booleans, true and false only: in YAML 1.1 (PyYAML's) `on`, `off`, `yes` and
    `no` are booleans too, so a script action's `on: source` would be the key True. pydantic
    still reads `critical: yes` as true."""


_BOOL = "tag:yaml.org,2002:bool"
_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in _UniqueKeyLoader.yaml_implicit_resolvers.items()}
_PlanLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _validation_problems(exc: ValidationError, data: dict, node: yaml.Node) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        raw = tuple(err["loc"])
        loc, member = _without_union_members(raw)
        if member is not None and not _member_fits(member[1], _value_at(data, loc[:member[0]])):
            continue  # the error of the member the value was not meant as (a name, given a mapping)
        shown = (*loc[:-1], _shown_key(loc[-1])) if err["type"] == "extra_forbidden" else loc
        problem = (line_of(node, loc), field_path(shown), _reason(err, raw, loc))
        if problem not in problems:  # a point fails both of its members' checks: say it once
            problems.append(problem)
    return problems


def _without_union_members(loc: Loc) -> tuple[Loc, tuple[int, str] | None]:
    """The field path of an error, without the union member pydantic names in it; and which
    member of `machines` or `point` it is (where in the path, its name)."""
    kept: list[str | int] = []
    member = None
    for i, seg in enumerate(loc):
        after_index = i >= 2 and isinstance(loc[i - 1], int)
        if after_index and loc[i - 2] in ("pre", "post") and seg in _ACTION_MODELS:
            continue
        if (after_index and loc[i - 2] == "machines" and seg in _MACHINE_MEMBERS) or (i == 1 and loc[0] == "point"):
            member = (len(kept), str(seg))
            continue
        kept.append(seg)
    return tuple(kept), member


def _shown_key(key: str | int) -> str | int:
    """An unknown key as the message shows it: a misspelt field, not a pasted secret (long)."""
    return key if len(str(key)) <= _MAX_SHOWN_KEY and str(key).isprintable() else "…"


def _member_fits(member: str, value: object) -> bool:
    if member == "str":
        return not isinstance(value, dict)
    if member == "PlanMachine":
        return isinstance(value, dict)
    return True


def _value_at(data: object, loc: Loc) -> object:
    for seg in loc:
        try:
            data = data[seg]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _reason(err: dict, raw: Loc, loc: Loc) -> str:
    """pydantic's message, short; an unknown field with the fields that exist there."""
    if loc == ("point",):
        return _POINT_RULE
    if err["type"] == "extra_forbidden":
        return _unknown_field(str(loc[-1]), _model_at(raw[:-1]))
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _model_at(raw: Loc) -> type[BaseModel] | None:
    """The model an error's (raw) location points into, to name its fields."""
    if raw == ():
        return Plan
    if raw[-1] in _ACTION_MODELS and len(raw) >= 3 and raw[-3] in ("pre", "post"):
        return _ACTION_MODELS[str(raw[-1])]
    if raw[-1] == "PlanMachine":
        return PlanMachine
    if len(raw) == 2 and raw[0] == "groups":
        return PlanGroup
    return None


def _unknown_field(name: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return "unknown field"
    fields = sorted(model.model_fields)
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the fields here are {', '.join(fields)}"
    return f"unknown field: {hint}"


# -- finding a plan -------------------------------------------------------------------------


def list_plans(plans_dir: Path) -> list[Path]:
    """The plan files of a folder (*.yaml, *.yml), by name; none if the folder does not exist."""
    plans_dir = Path(plans_dir)
    if not plans_dir.is_dir():
        return []
    return sorted(p for p in plans_dir.iterdir() if p.suffix in PLAN_SUFFIXES and p.is_file())


def plan_path(name_or_path: str, plans_dir: Path) -> Path:
    """A plan file: an existing .yaml / .yml file, or a plan name, found as <plans_dir>/<name>.yaml
    (or .yml)."""
    given = Path(name_or_path)
    if given.suffix in PLAN_SUFFIXES or "/" in name_or_path:
        if given.is_file():
            return given
        raise PlanError(f"{given}: no such plan file")
    for suffix in PLAN_SUFFIXES:
        candidate = Path(plans_dir) / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    names = [p.stem for p in list_plans(plans_dir)]
    held = f"it holds {', '.join(names)}" if names else "it holds no plans"
    raise PlanError(f"no plan named {name_or_path!r} in {plans_dir} ({held})")
