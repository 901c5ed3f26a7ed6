"""The repository's layout: README.md's "Layout" section against the tracked tree, a README (or a
package docstring) in every folder it lists, and the one-way rules those READMEs state."""

from __future__ import annotations

import ast
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "python/spark_infer"
SUBPACKAGES = ("convert", "serve", "train", "bench")


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "-C", REPO, "ls-files"], capture_output=True, text=True,
                             timeout=60)
    except OSError:
        pytest.skip("git is not installed")
    if out.returncode != 0 or not out.stdout:
        pytest.skip("not a git checkout")
    return out.stdout.splitlines()


def _layout_folders() -> set[str]:
    """Folders of the README's Layout block: a line's first word ending in "/", indented ones
    under the last unindented one."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    folders: set[str] = set()
    parent = ""
    for line in block.splitlines():
        m = re.match(r"( *)(\S+/)(\s|$)", line)
        if not m:
            continue
        if m.group(1):
            folders.add(parent + m.group(2).rstrip("/"))
        else:
            parent = m.group(2)
            folders.add(parent.rstrip("/"))
    return folders


def _tree_folders(tracked: list[str]) -> set[str]:
    """Top folders (python/ by its one package), cpp/'s folders and the package's subfolders."""
    dirs = {os.path.dirname(p) for p in tracked}
    out = {d.split("/")[0] for d in dirs if d and not d.startswith("python")}
    out.add(PKG)
    out |= {"/".join(d.split("/")[:2]) for d in dirs if d.startswith("cpp/")}
    out |= {"/".join(d.split("/")[:3]) for d in dirs if d.startswith(PKG + "/")}
    return out


def test_readme_layout_lists_exactly_the_tree(tracked: list[str]) -> None:
    assert {p.split("/")[1] for p in tracked if p.startswith("python/")} == {"spark_infer"}
    listed, tree = _layout_folders(), _tree_folders(tracked)
    assert listed == tree, (f"in README's Layout but not in the tree: {sorted(listed - tree)}; "
                            f"in the tree but not in the Layout: {sorted(tree - listed)}")


def test_every_listed_folder_says_what_lives_there() -> None:
    for folder in sorted(_layout_folders()):
        path = os.path.join(REPO, folder)
        init = os.path.join(path, "__init__.py")
        if os.path.isfile(init):
            with open(init, encoding="utf-8") as f:
                doc = ast.get_docstring(ast.parse(f.read()))
            assert doc and len(doc) > 80, f"{folder}/__init__.py has no package docstring"
        elif os.path.isfile(os.path.join(path, "README.md")):
            with open(os.path.join(path, "README.md"), encoding="utf-8") as f:
                assert len(f.read()) > 80, f"{folder}/README.md says nothing"
        else:
            # A folder of one script may say it in the script's header comment (.ci/run).
            files = os.listdir(path)
            assert len(files) == 1, f"{folder} has neither README.md nor __init__.py"
            with open(os.path.join(path, files[0]), encoding="utf-8") as f:
                head = [ln for ln in f.read().splitlines()[:5] if ln.startswith("# ")]
            assert head, f"{folder}/{files[0]}: no README.md and no header comment"


def _includes(folder: str) -> dict[str, set[str]]:
    """The project folders each file of cpp/<folder> includes ("ops", "util", ...)."""
    out = {}
    base = os.path.join(REPO, "cpp", folder)
    for name in sorted(os.listdir(base)):
        if name.endswith((".h", ".cc")):
            with open(os.path.join(base, name), encoding="utf-8") as f:
                out[name] = set(re.findall(r'^#include "([a-z_]+)/', f.read(), re.M)) - {"hwy"}
    return out


def test_cpp_includes_flow_one_way() -> None:
    for name, inc in _includes("util").items():
        assert inc <= {"util"}, f"cpp/util/{name} includes {sorted(inc - {'util'})}"
    for name, inc in _includes("weights").items():
        assert inc <= {"weights"}, f"cpp/weights/{name} includes {sorted(inc - {'weights'})}"
    for name, inc in _includes("ops").items():
        assert inc <= {"ops", "weights", "util"}, f"cpp/ops/{name} includes {sorted(inc)}"
    for name, inc in _includes("model").items():
        assert inc <= {"model", "ops", "weights", "util"}, f"cpp/model/{name} includes {sorted(inc)}"
    for name, inc in _includes("bench").items():
        assert inc <= {"bench", "ops", "weights", "util"}, f"cpp/bench/{name} includes {sorted(inc)}"


def _imports(path: str, module_level_only: bool) -> set[str]:
    """Absolute names of the spark_infer modules a file imports ("spark_infer.convert.gguf")."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    pkg = os.path.relpath(os.path.dirname(path), os.path.join(REPO, "python")).replace(os.sep, ".")
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out |= {f"{base}.{a.name}" for a in node.names} | {base}
    return {m for m in out if m.startswith("spark_infer")}


def test_python_imports_flow_one_way() -> None:
    # The weight types import nothing of the package but themselves (numpy only).
    for name in sorted(os.listdir(os.path.join(REPO, PKG, "weights"))):
        if name.endswith(".py"):
            got = _imports(os.path.join(REPO, PKG, "weights", name), module_level_only=False)
            bad = {m for m in got if not m.startswith("spark_infer.weights")}
            assert not bad, f"{PKG}/weights/{name} imports {sorted(bad)}"
    # The runtime tokenizer knows nothing of GGUF: convert/ imports it, never the reverse.
    got = _imports(os.path.join(REPO, PKG, "tokenizer.py"), module_level_only=False)
    assert not {m for m in got if m.startswith("spark_infer.convert")}, got
    # The runtime's modules import no subpackage when they are imported (cli and models reach
    # convert / bench / serve lazily, inside the commands that need them).
    for name in sorted(os.listdir(os.path.join(REPO, PKG))):
        if name.endswith(".py"):
            got = _imports(os.path.join(REPO, PKG, name), module_level_only=True)
            bad = {m for m in got for sub in SUBPACKAGES if m.startswith(f"spark_infer.{sub}")}
            assert not bad, f"{PKG}/{name} imports {sorted(bad)} at module level"
