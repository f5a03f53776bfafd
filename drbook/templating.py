"""The one place templates are loaded from: the drbook.templates package (templates/ in
the repository), so an installed wheel renders exactly what a checkout does."""

from __future__ import annotations

import shlex

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted literal."""
    return "'" + str(value).replace("'", "''") + "'"


def environment() -> Environment:
    """HTML templates are autoescaped; scripts get the `sh` and `ps` quoting filters."""
    env = Environment(
        loader=PackageLoader("drbook.templates", "."),
        undefined=StrictUndefined,
        autoescape=select_autoescape(["html", "html.j2"]),
        keep_trailing_newline=True,
    )
    env.filters["sh"] = lambda v: shlex.quote(str(v))
    env.filters["ps"] = ps_quote
    return env


def template_names() -> list[str]:
    return sorted(n for n in environment().list_templates() if n.endswith(".j2"))


def render(name: str, **values: object) -> str:
    """One template rendered; a value the template needs but was not given is an error."""
    return environment().get_template(name).render(**values)
