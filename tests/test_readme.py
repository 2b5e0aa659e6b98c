"""The README's Python section runs against the public API: every name it imports exists and every
call it makes binds to that function's signature (the calls themselves need the hub)."""

import ast
import inspect
import re
from pathlib import Path

import budgetlora

README = Path(__file__).resolve().parents[1] / "README.md"


def python_section_code() -> str:
    section = README.read_text(encoding="utf-8").split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))


def test_the_python_section_uses_only_public_names_with_their_real_signatures():
    tree = ast.parse(python_section_code())
    imported = {alias.asname or alias.name: alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module == "budgetlora" for alias in node.names}
    assert imported and set(imported.values()) <= set(budgetlora.__all__)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in imported]
    assert {call.func.id for call in calls} == set(imported)  # every imported name is used
    for call in calls:
        signature = inspect.signature(getattr(budgetlora, imported[call.func.id]))
        args = [object() for _ in call.args]
        kwargs = {kw.arg: object() for kw in call.keywords}
        signature.bind(*args, **kwargs)  # raises TypeError when the README calls it wrongly
