"""Confirmation pages for destructive actions (the NHS and GOV.UK pattern): a page that says what will
happen and what cannot be undone, with one "Yes, ..." button that posts the action and a link that
cancels.

The page is served by a GET on the action's own URL and changes nothing: its view asks the service what
the action would act on (the service checks permission and state as the action does, so a refusal is
refused and audited the same way) and renders a ``Confirmation``. The POST is still the only thing that
changes state, through the same service call, CSRF-protected like every form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flask import render_template


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation page says and where its button posts."""

    caption: str  # what is being acted on, above the question
    question: str  # "Are you sure you want to ...?"
    consequences: Sequence[str]  # what happens, one line each
    action: str  # the URL the "Yes" button posts to
    button: str  # "Yes, withdraw this request"
    cancel: str  # where "Cancel" goes (the page the person came from)
    cancel_text: str = "No, go back"
    warning: str = ""  # said in a warning callout when the action cannot be undone
    reason_label: str = ""  # asks for a reason (sent as ``reason``) when given
    reason_hint: str = ""
    hidden: Sequence[tuple[str, str]] = field(default_factory=tuple)  # extra form fields


def render_confirmation(c: Confirmation, title: str) -> str:
    return render_template("confirm.html", title=title, c=c)


__all__ = ["Confirmation", "render_confirmation"]
