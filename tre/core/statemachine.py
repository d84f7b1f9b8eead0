"""Small helpers shared by the state machines (projects, output requests): one transition table
per machine, drawn as a Mermaid diagram for the docs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def mermaid_diagram(transitions: Mapping[tuple[str, str], str], states: Iterable[str], initial: str) -> str:
    """A Mermaid state diagram of ``transitions`` ((from, to) -> step name); final states end in [*]."""
    lines = ["stateDiagram-v2", f"    [*] --> {initial}"]
    sources = {frm for frm, _ in transitions}
    for (frm, to), step in transitions.items():
        lines.append(f"    {frm} --> {to}: {step}")
    for state in states:
        if state not in sources:
            lines.append(f"    {state} --> [*]")
    return "\n".join(lines) + "\n"
