"""The README's SDK compatibility table is the matrix the integration test runs."""

from __future__ import annotations

from tests.peers import REPO
from tests.sdk_matrix.matrix import CLIENTS, WAYS, render_table

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_readme_table_is_the_matrix() -> None:
    """The "SDK compatibility" section shows exactly the table tests/sdk_matrix/matrix.py
    renders: same clients, same ways, same verdicts and reasons."""
    section = _section("SDK compatibility")
    shown = "\n".join(line for line in section.splitlines() if line.startswith("|")) + "\n"
    assert shown == render_table(), (
        "update the README's table: .venv/bin/python -c "
        "'from tests.sdk_matrix.matrix import render_table; print(render_table())'"
    )


def test_every_cell_is_pass_or_a_reason() -> None:
    """Every client has a verdict for every way: pass, or a non-empty reason."""
    assert len({client.key for client in CLIENTS}) == len(CLIENTS)
    for client in CLIENTS:
        for way in WAYS:
            reason = client.reason(way.key)
            assert reason is None or reason.strip(), (client.key, way.key)
        assert set(client.unsupported) <= {way.key for way in WAYS}, client.key
