"""One installable package: the wheel holds only `drbook` (flows, tasks and templates
inside it), installs and runs outside the checkout, and drbook never imports the lab."""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Repository folder -> the package it installs as (pyproject.toml's package-dir).
INSTALLED_AS = {"drbook": "drbook", "flows": "drbook/flows", "tasks": "drbook/tasks", "templates": "drbook/templates",
                "deployments": "drbook/deployments"}


def _product_files() -> list[Path]:
    return [p for folder in INSTALLED_AS for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_product_never_imports_the_lab_or_a_top_level_flows_or_tasks():
    offenders = []
    for path in _product_files():
        for name in _imported_modules(path):
            if name.split(".")[0] in {"lab", "flows", "tasks", "templates", "tests", "bench"}:
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_drbook_help_loads_no_module_of_the_lab():
    code = textwrap.dedent("""
        import sys
        import drbook.cli
        try:
            drbook.cli.app(["--help"], standalone_mode=False)
        except SystemExit:
            pass
        loaded = sorted(m for m in sys.modules if m == "lab" or m.startswith("lab."))
        assert not loaded, loaded
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what pyproject.toml names (no build/ left over from an earlier
    build can slip a deleted module in, and the checkout gets no build/ of its own)."""
    import shutil

    source = tmp_path_factory.mktemp("source")
    shutil.copy(REPO / "pyproject.toml", source)
    for folder in INSTALLED_AS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, text=True)
    (found,) = out.glob("drbook-*.whl")
    return found


def test_the_wheel_holds_only_drbook(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert top == {"drbook"}
    assert not [n for n in names if "node_modules" in n or ".lab/" in n]
    missing = []
    for path in _product_files():
        folder, *rest = path.relative_to(REPO).parts
        if "/".join([INSTALLED_AS[folder], *rest]) not in names:
            missing.append(str(path.relative_to(REPO)))
    assert not missing, f"in the repository but not in the wheel (pyproject's package list?): {missing}"
    templates = {p.name for p in (REPO / "templates").glob("*.j2")}
    assert templates and templates <= {n.split("/")[-1] for n in names if n.startswith("drbook/templates/")}
    assert "drbook/deployments/prefect.yaml" in names  # `drbook deploy` of an installed wheel


def test_the_wheel_installs_and_runs_outside_the_checkout(wheel, tmp_path):
    """A fresh virtual environment with the wheel installed; the dependencies are borrowed
    from this one's site-packages by path (no .pth of it runs, so no editable drbook)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True)
    site_packages = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        check=True, capture_output=True, text=True).stdout.strip())
    (site_packages / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    helped = subprocess.run([str(venv / "bin" / "drbook"), "--help"], capture_output=True, text=True, cwd=elsewhere)
    assert helped.returncode == 0, helped.stderr
    assert "test-failover" in helped.stdout

    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        import jinja2
        import drbook, drbook.flows.drill, drbook.tasks.azure
        from drbook.config import MachineConfig
        from drbook.mobility import render_install_script
        from drbook.templating import environment, template_names

        assert Path(drbook.__file__).is_relative_to(Path(sys.prefix)), drbook.__file__
        names = template_names()
        assert names, "no templates installed"
        env = environment()
        env.undefined = jinja2.ChainableUndefined
        for name in names:
            assert env.get_template(name).render(), name
        for os_name in ("linux", "windows"):
            script = render_install_script(MachineConfig(name="m", address="127.0.0.1", os=os_name), "1.0", "ab" * 32)
            assert script.splitlines()[0].startswith("# drbook:"), script[:80]
        from drbook.deploy import prefect_yaml, read_deployments
        assert prefect_yaml().is_relative_to(Path(sys.prefix)), prefect_yaml()
        assert len(read_deployments(prefect_yaml())) >= 10
        assert not [m for m in sys.modules if m == "lab" or m.startswith("lab.")]
        print(len(names))
    """)
    rendered = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=elsewhere)
    assert rendered.returncode == 0, rendered.stderr
    assert int(rendered.stdout.strip()) >= 4


def test_without_a_site_drbook_says_where_it_looked_and_exits_2(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")}
    out = subprocess.run([sys.executable, "-m", "drbook.cli", "items"], capture_output=True, text=True, cwd=tmp_path,
                         env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr  # one line, however long
    assert out.stderr.startswith(f"error: {tmp_path}/.config/drbook/site.yaml: no site config")
