"""Why a job failed: written once (jobs.error, a `Failed` event) and read later, by whoever
looks, in their own language.

What is stored is the reason's English message, as marked with `N_` where the job failed, and
on a second line what the provider said, if anything (a detail is never translated):

    stored(N_("the generator refused the request"), str(exc))
    -> "the generator refused the request\nprompt too long"

`shown` turns it into the language being written in: "the generator refused the request
(prompt too long)" in English. A reason stored before reasons were translated has no second
line and reads through the catalogue as it is (an unknown one reads as written).
"""

from __future__ import annotations

from bot.i18n import _

__all__ = ["english", "shown", "stored"]

_SEPARATOR = "\n"


def stored(reason: str, detail: str | None = None) -> str:
    """What jobs.error holds: `reason` (an English message marked with `N_`) and, when given,
    the provider's `detail` on the next line (its own line breaks made spaces)."""
    detail = " ".join(detail.split()) if detail else ""
    return f"{reason}{_SEPARATOR}{detail}" if detail else reason


def shown(text: str) -> str:
    """A stored reason in the language being written in, the detail in brackets after it."""
    reason, detail = _split(text)
    # Braces are no placeholder in a reason: an old row's provider text may hold some.
    translated = _(reason.replace("{", "{{").replace("}", "}}"))
    return f"{translated} ({detail})" if detail else translated


def english(text: str) -> str:
    """A stored reason on one line, as written (for logs)."""
    reason, detail = _split(text)
    return f"{reason} ({detail})" if detail else reason


def _split(text: str) -> tuple[str, str]:
    reason, _separator, detail = text.partition(_SEPARATOR)
    return reason, " ".join(detail.split())
