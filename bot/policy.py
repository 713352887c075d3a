"""Settings scoped global / community / user, resolved into the policy that applies to one
person in one place. Owners (config OWNER_IDS) write the global scope, moderators their
community's; for a single value the narrowest scope wins.

Two kinds of setting only ever add up instead: banned words and disabled operations from the
global scope still apply in every community, and the safety filter takes the strictest level
set anywhere, so a community can tighten the operator's rules but never loosen them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.safety import SafetyLevel, strictest
from bot.styles import DEFAULT_STYLE, STYLES
from storage.records import SettingRecord


class Key(StrEnum):
    DAILY_QUOTA = "daily_quota"
    DISABLED_OPERATIONS = "disabled_operations"
    STYLE_DEFAULT = "style_default"
    BANNED_WORDS = "banned_words"
    SAFETY_LEVEL = "safety_level"
    # A person's own choice (/language, their scope) or a community's (/admin language): read
    # by `bot/commands/language.py`, not part of the policy.
    LANGUAGE = "language"


@dataclass(frozen=True)
class Policy:
    daily_quota: int
    disabled_operations: frozenset[str]
    style_default: str
    banned_words: tuple[str, ...]
    safety_level: SafetyLevel


def resolve(
    rows: Iterable[SettingRecord],
    *,
    user_id: int | None,
    community_id: int | None,
    default_quota: int,
) -> Policy:
    """The policy for `user_id` in `community_id` (None: a DM) from every row that could apply."""
    by_scope: dict[tuple[int | None, int | None], dict[str, Any]] = {}
    for row in rows:
        by_scope.setdefault((row.community_id, row.user_id), {})[row.key] = row.value
    narrowest_first = [
        by_scope.get((community_id, user_id), {}) if community_id is not None else {},
        by_scope.get((None, user_id), {}),
        by_scope.get((community_id, None), {}) if community_id is not None else {},
        by_scope.get((None, None), {}),
    ]
    broad = [by_scope.get((None, None), {})]
    if community_id is not None:
        broad.append(by_scope.get((community_id, None), {}))

    def narrowest(key: Key, default: Any) -> Any:
        return next((scope[key] for scope in narrowest_first if key in scope), default)

    style = narrowest(Key.STYLE_DEFAULT, DEFAULT_STYLE)
    words: list[str] = []
    for scope in broad:
        words.extend(w for w in scope.get(Key.BANNED_WORDS, []) if w not in words)
    return Policy(
        daily_quota=int(narrowest(Key.DAILY_QUOTA, default_quota)),
        disabled_operations=frozenset(
            op for scope in broad for op in scope.get(Key.DISABLED_OPERATIONS, [])
        ),
        style_default=style if style in STYLES else DEFAULT_STYLE,
        banned_words=tuple(words),
        safety_level=strictest(
            SafetyLevel.STANDARD,
            *(SafetyLevel(scope[Key.SAFETY_LEVEL]) for scope in broad if Key.SAFETY_LEVEL in scope),
        ),
    )
