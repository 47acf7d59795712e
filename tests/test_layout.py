"""Two packages in one repository: the library never imports the experiments, the experiments use only pfm's public
API, `pfm reproduce` finds them by entry point (and says how to install them when they are not), no import cycle, and a
wheel of the experiments carries their data files."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pfm import cli
from pfm.cli import reproduce

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src" / "pfm"
EXPERIMENTS = ROOT / "experiments" / "src" / "pfm_experiments"
NAMES = ["toy2d", "mnist", "control", "text"]


def imports(path: Path):
    """(line, absolute module or None, relative level, names) for every import in the file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, 0, []
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module, node.level, [a.name for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            yield node.lineno, node.args[0].value, 0, []


def test_the_library_never_imports_the_experiments():
    files = list(LIBRARY.rglob("*.py"))
    assert len(files) > 20
    bad = [f"{p.relative_to(ROOT)}:{line}: {module}" for p in files for line, module, level, _ in imports(p)
           if level == 0 and module and module.split(".")[0] == "pfm_experiments"]
    assert not bad, bad
    assert not list((ROOT / "src").glob("pfm_experiments*")), "the experiments are packaged apart from the library"


def test_the_experiments_import_only_public_modules_of_pfm():
    files = list(EXPERIMENTS.rglob("*.py"))
    assert len(files) > 20
    bad = []
    for p in files:
        package = list(p.relative_to(EXPERIMENTS.parent).with_suffix("").parts)
        if p.name != "__init__.py":
            package = package[:-1]
        for line, module, level, names in imports(p):
            where = f"{p.relative_to(ROOT)}:{line}"
            if level > 0:
                if level - 1 >= len(package):  # above pfm_experiments: into whatever lies beside it
                    bad.append(f"{where}: relative import out of pfm_experiments ({'.' * level}{module or ''})")
                continue
            parts = (module or "").split(".")
            if parts[0] != "pfm":
                continue
            private = [x for x in parts[1:] + names if x.startswith("_")]
            if private:
                bad.append(f"{where}: private {'.'.join(parts)} {private}")
    assert not bad, bad


def run_python(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", code], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.integration
def test_importing_every_library_module_loads_no_experiment():
    code = """if True:
        import pkgutil, sys
        import pfm, pfm.cli
        names = [m.name for m in pkgutil.walk_packages(pfm.__path__, "pfm.") if m.name != "pfm.__main__"]
        for name in names:
            __import__(name)
        assert "pfm.text.codec" in names and "pfm.data.formats.npz" in names and "pfm.io" in names, names
        assert not any(n.startswith("pfm.tasks") for n in names), names
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "pfm_experiments")
        assert not leaked, leaked
        print(len(names))
    """
    assert int(run_python(code).stdout) > 25


def test_reproduce_finds_the_experiments_by_entry_point(capsys):
    pytest.importorskip("pfm_experiments")
    found = cli.experiments()
    assert list(found) == NAMES
    assert all(callable(e.run) and callable(e.add_arguments) for e in found.values())
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--quick", "--seeds", "--out", "--preference", "--reward", "--dataset", "--field", "--flow-steps",
                 "--data-path", "--tasks", "--kinds", "--protocols", "--start", "--dataset-steps",
                 "--teacher-lookahead", "--reference", "--annotator", "--quiet"):
        assert flag in out, flag
    assert "{toy2d,mnist,control,text}" in out and "toy2d: the illustrative 2D example" in out
    assert "mnist: 'mnist' (default" in out and "control: a Minari data set id" in out  # --dataset: both helps


@pytest.mark.parametrize("argv", [["reproduce", "toy2d", "--quick"], ["reproduce", "control", "--quick", "--tasks",
                                                                       "hopper", "--dataset", "x", "-q"]])
def test_reproduce_without_the_experiments_says_how_to_install_them(argv, capsys, monkeypatch):
    monkeypatch.setattr(reproduce, "experiments", dict)  # as if no package declared the entry points
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"pfm: error: pfm reproduce {argv[1]} needs the experiments"), err
    assert "pip install -e experiments" in err and "pip install pfm-experiments" in err, err


def test_reproduce_with_the_experiments_package_gone_says_to_reinstall_them(capsys, monkeypatch):
    gone = ModuleNotFoundError("No module named 'pfm_experiments'", name="pfm_experiments")
    gone.package = "pfm_experiments"  # what experiments() records of an entry point that failed to load
    monkeypatch.setattr(reproduce, "experiments", lambda: {"toy2d": gone})
    assert cli.main(["reproduce", "toy2d", "--quick", "--reward", "edge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be imported" in err and "pip install -e experiments" in err, err


def test_the_error_is_a_pfm_error():
    from pfm.errors import ExperimentsNotInstalledError, MissingDependencyError, PFMError

    assert issubclass(ExperimentsNotInstalledError, MissingDependencyError)
    assert issubclass(ExperimentsNotInstalledError, PFMError) and issubclass(ExperimentsNotInstalledError, ImportError)


def test_io_and_validate_hold_their_implementations_with_no_private_twins():
    from pfm import io, validate

    for module in (io, validate):
        assert module.__all__ and all(getattr(module, n).__module__ == module.__name__ for n in module.__all__)
    assert not list(LIBRARY.glob("_io.py")) and not list(LIBRARY.glob("_validate.py"))


@pytest.mark.integration
@pytest.mark.slow
def test_the_experiments_wheel_carries_its_data_and_entry_points(tmp_path):
    # built from a copy of the tracked sources, so that the build leaves nothing in the checkout (setuptools writes
    # build/ and an egg-info beside the pyproject) and a stale build/ there cannot leak into the wheel
    source = tmp_path / "experiments"
    shutil.copytree(ROOT / "experiments", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".venv"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(source), "-w", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("pfm_experiments-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(entry_points).decode()
    for task in ("hopper", "halfcheetah", "walker2d"):
        assert f"pfm_experiments/control/experts/{task}.npz" in names, names
    assert "pfm_experiments/cli.py" in names and "pfm_experiments/toy2d/__init__.py" in names
    assert not [n for n in names if n.startswith("pfm/")], "the library is not in the experiments' wheel"
    assert "[pfm.experiments]" in text, text
    for name in NAMES:
        assert f"{name} = pfm_experiments.cli:{name.upper()}" in text, text


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports}`` for every module under ``package``, every import
    counted: at the top, inside functions (lazy) and under ``TYPE_CHECKING``. ``from . import x`` is an edge to the
    submodule ``x``, not to the package, when ``x`` is one."""
    mods = {}
    for f in package.rglob("*.py"):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        here = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for _, module, level, names in imports(f):
            base = ".".join(here[:len(here) - level + 1] + ([module] if module else [])) if level else (module or "")
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in mods]
            targets = subs + ([base] if base in mods and len(subs) < max(1, len(names)) else [])
            graph[m].update(t for t in targets if t != m)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycle_lazy_and_type_only_imports_included():
    assert import_cycles(import_graph(LIBRARY)) == []
    assert import_cycles(import_graph(EXPERIMENTS)) == []


def test_the_cycle_check_finds_a_lazy_and_a_type_only_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import A\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.b import B\nA = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\nB = 2\n")
    (pkg / "c.py").write_text("from . import a\n")  # an edge to the submodule a, not to the package
    assert import_cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def test_the_library_top_level_holds_at_most_twenty_modules():
    # one concept a subpackage (data/, train/, flow/, baselines/, text/, cli/, compat/, report/); the top level keeps
    # the public API and the method's small arrows (docs/layout.md)
    top = sorted(p.name for p in Path(cli.__file__).parent.parent.glob("*.py"))
    assert len(top) <= 20, top


def test_the_library_tests_import_no_experiment():
    # tests/ tests the library alone; the experiments' tests are experiments/tests/ (pytest's testpaths run both)
    here = Path(__file__).resolve().parent
    bad = []
    for path in sorted(here.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "pfm_experiments"]
    assert not bad, bad
    moved = sorted(p.name for p in (ROOT / "experiments" / "tests").glob("test_*.py"))
    assert {"test_toy2d.py", "test_images.py", "test_text.py", "test_control.py"} <= set(moved), moved
