"""The one-way rule between the packages: flows → tasks → sonufy_model → sql.

Read from the source (every import statement, the lazy ones inside functions
too), so that a module importing against the rule fails here rather than in
review. ``sonufy_demo`` (the stand-in and the synthetic catalog) is no part of
the runtime path: the domain and the tasks never import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

#: What each package's modules must not import (top-level package names).
FORBIDDEN = {
    "sonufy_model": {"prefect", "flows", "tasks", "sonufy_demo"},
    "tasks": {"flows", "sonufy_demo"},
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    wrong = {
        str(path.relative_to(REPO_ROOT)): sorted(_imported_packages(path) & FORBIDDEN[package])
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }
    assert {module: names for module, names in wrong.items() if names} == {}


def _flow_modules() -> set[str]:
    """The modules of flows/ that define a Prefect flow (``@flow``), as dotted names."""
    found = set()
    for path in sorted((REPO_ROOT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.FunctionDef):
                continue
            called = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
            if any(isinstance(d, ast.Name) and d.id == "flow" for d in called):
                found.add(f"flows.{path.stem}")
    return found


def test_no_flow_imports_another():
    flows = _flow_modules()
    assert flows == {"flows.build", "flows.nightly", "flows.retrain", "flows.train"}
    wrong = {}
    for module in sorted(flows):
        path = REPO_ROOT / (module.replace(".", "/") + ".py")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        if imported & (flows - {module}):
            wrong[module] = sorted(imported & (flows - {module}))
    assert wrong == {}


def test_the_query_path_imports_no_downloader():
    # Recommending, paths and radios never fetch audio: importing them must
    # not pull in aiohttp through the preview fetcher (journeys needs only names).
    assert _loaded_by(["sonufy_model.journeys", "sonufy_model.search", "flows.cli.query"],
                      ["aiohttp", "sonufy_model.previews", "sonufy_model.url_guard"]) == []


def test_the_query_path_imports_scipy_special_only_for_hub_reduction():
    # `sonufy recommend` waits on its imports: scipy.special (0.3 s) is for
    # mutual proximity only, not for reading the seed's vector.
    assert _loaded_by(["sonufy_model.query_audio", "sonufy_model.journeys", "flows.cli.query"],
                      ["scipy.special"]) == []


def test_the_nightly_loads_torch_only_when_it_encodes():
    # An empty night must start fast: importing the nightly flow (and the
    # build's shared stages, the typed parameters, the encode task) must not
    # import torch or Lightning; the encode task loads them with the model.
    assert _loaded_by(["flows.nightly", "flows.stages", "flows.parameters", "tasks.encoding"],
                      ["torch", "lightning", "sonufy_model.model", "sonufy_model.training"]) == []


def _loaded_by(imported: list[str], watched: list[str]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``imported``."""
    import json
    import subprocess
    import sys

    code = (f"import sys, {', '.join(imported)}; "
            f"print(__import__('json').dumps(sorted(m for m in {watched!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_flow_process_freezes_its_objects_only_after_its_other_exit_handlers(tmp_path):
    # The interpreter's last collection walks every object a busy night left
    # (1.7 to 2.0 s); a process that imported the flows freezes them at exit.
    # Exit handlers registered after that import (Prefect's drains) run first
    # and see nothing frozen; a temporary folder's clean-up still happens.
    import subprocess
    import sys

    code = (
        "import atexit, gc, tempfile\n"
        "atexit.register(lambda: print('after the flows handler: frozen', gc.get_freeze_count() > 0, flush=True))\n"
        "import flows.nightly\n"
        "atexit.register(lambda: print('before it: frozen', gc.get_freeze_count() > 0, flush=True))\n"
        f"folder = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})\n"
        "print('folder', folder.name, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[1:] == ["before it: frozen False", "after the flows handler: frozen True"]
    folder = Path(lines[0].split(" ", 1)[1])
    assert folder.parent == tmp_path and not folder.exists(), "the temporary folder was cleaned up at exit"
