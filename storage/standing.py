"""What decides whether a person may generate in a place, read together in one transaction:
who they are to us, the settings that apply to them there, and the ban that keeps them out."""

from __future__ import annotations

from dataclasses import dataclass

from storage.accounts import find_user_in
from storage.bans import ban_in
from storage.database import Database
from storage.records import BanRecord, SettingRecord, UserRecord
from storage.settings import settings_in


@dataclass(frozen=True)
class Standing:
    # None: never seen (their row is made with their first job).
    user: UserRecord | None
    # Every setting that applies to them in the community, at any level, oldest first.
    settings: list[SettingRecord]
    ban: BanRecord | None


class StandingRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def read(
        self, *, platform: str, platform_user_id: str, subject: str, community_id: int | None
    ) -> Standing:
        """The standing of the person with this platform id (and ban `subject`, their keyed
        pseudonym) in `community_id` (None: a DM)."""
        async with self._db.read() as conn:
            user = await find_user_in(conn, platform, platform_user_id)
            settings = await settings_in(
                conn, user_id=user.id if user else None, community_id=community_id
            )
            ban = await ban_in(conn, subject, community_id=community_id)
        return Standing(user, settings, ban)
