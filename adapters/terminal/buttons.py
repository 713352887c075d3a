"""Buttons in a terminal: each one shown gets the next number, pressed with `/press N`.

Numbers run on for the whole session rather than per message: results of several jobs arrive
in any order, and "1" must never mean two buttons.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot.ui import Button


class ButtonBoard:
    def __init__(self) -> None:
        self._shown: dict[int, Button] = {}

    def show(self, buttons: Sequence[Button]) -> str:
        """The line offering `buttons` ("[1] Re-roll  [2] Delete"); empty if there are none."""
        labels = []
        for button in buttons:
            number = len(self._shown) + 1
            self._shown[number] = button
            labels.append(f"[{number}] {button.label}")
        return "  ".join(labels)

    def find(self, typed: str) -> Button | None:
        """The button numbered `typed`, if one was shown."""
        word = typed.strip().lstrip("[").rstrip("]")
        return self._shown.get(int(word)) if word.isdigit() and len(word) < 10 else None
