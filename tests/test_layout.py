"""The house rules that keep the code in its rooms."""

import ast
import re
from pathlib import Path

PKG = Path(__file__).parents[1] / "src" / "napari_segsuite"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
    return out


def test_models_import_neither_the_engine_nor_the_tasks():
    for f in (PKG / "models").glob("*.py"):
        for level, module in _imports(f):
            assert level < 2, f"{f.name} imports ..{module}"
            assert not module.startswith("napari_segsuite") or module.startswith("napari_segsuite.models"), f.name


def test_the_engine_imports_no_qt_or_napari():
    for f in PKG.rglob("*.py"):
        if "widgets" in f.parts or f.name in ("demo.py", "sample_data.py", "__init__.py"):
            continue
        for _, module in _imports(f):
            assert not re.match(r"(napari|qtpy|PyQt\d|magicgui)(\.|$)", module), (
                f"{f.relative_to(PKG)} imports {module}"
            )


def test_no_task_name_is_compared_outside_the_tasks():
    pattern = re.compile(r"""(==|!=|\bin)\s*[\(\[{]?\s*["'](semantic|instance|panoptic)["']""")
    for f in PKG.rglob("*.py"):
        if "tasks" in f.parts or f.name == "registry.py":
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{f.relative_to(PKG)}:{i}: {line.strip()}"


def test_no_module_is_much_over_400_lines():
    sizes = {f.relative_to(PKG): len(f.read_text().splitlines()) for f in PKG.rglob("*.py")}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
