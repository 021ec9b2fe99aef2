"""Every member of the plugin protocol is typed, documented in its class and in docs/plugins.md,
and known to the host (REQUIRED or OPTIONAL): a member added to one place and not the others
fails here, as datasette's test_docs does for its plugin hooks."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from vitscope.plugin import protocol

ROOT = Path(__file__).resolve().parents[2]


def _plugin_members() -> dict[str, str | None]:
    """member -> its docstring, from the Plugin class's source."""
    tree = ast.parse(Path(protocol.__file__).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Plugin")
    members: dict[str, str | None] = {}
    body = cls.body
    for i, node in enumerate(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(
                getattr(nxt, "value", None), ast.Constant) else None
            members[node.target.id] = doc
        elif isinstance(node, ast.FunctionDef):
            assert node.returns is not None, f"{node.name} has no return annotation"
            members[node.name] = ast.get_docstring(node)
    return members


def test_every_member_is_typed_documented_and_known_to_the_host():
    members = _plugin_members()
    assert set(members) == set(protocol.REQUIRED) | set(protocol.OPTIONAL)
    undocumented = [m for m, doc in members.items() if not (doc and doc.strip())]
    assert not undocumented, f"members of Plugin without a docstring: {undocumented}"
    assert set(protocol.Plugin.__annotations__) <= set(members)


def test_every_member_has_a_bullet_in_the_plugin_doc():
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = doc[doc.index("The protocol ("):]
    bullets = set(re.findall(r"^- `(\w+)", section, flags=re.M))
    missing = sorted(set(_plugin_members()) - bullets)
    assert not missing, f"docs/plugins.md has no '- `member`' bullet for {missing}"
