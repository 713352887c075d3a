"""Removing what the bot posted of a job: the messages chat platforms show its images in.

The command layer decides when (a job deleted, a person forgotten); each chat adapter says how,
as the `PostRemover` of its platform, registered when it starts. The messages are noted in the
database, so whichever replica runs the command removes what any replica posted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from storage.records import Post

log = logging.getLogger(__name__)

__all__ = ["Post", "PostRemover", "PostRemovers", "Removal"]


@dataclass(frozen=True)
class Removal:
    """What became of the messages asked to be removed."""

    removed: int = 0
    # The platform would not delete them (too old): their images are replaced by a placeholder.
    replaced: int = 0
    # Still there as they were (no access to the chat any more, the platform down).
    left: int = 0

    def __add__(self, other: Removal) -> Removal:
        return Removal(
            self.removed + other.removed, self.replaced + other.replaced, self.left + other.left
        )


class PostRemover(Protocol):
    """One platform's way to remove a message, as far as the platform allows."""

    async def remove(self, post: Post) -> Removal: ...


class PostRemovers:
    """The removers of the platforms this process runs, by platform."""

    def __init__(self) -> None:
        self._by_platform: dict[str, PostRemover] = {}

    def register(self, platform: str, remover: PostRemover) -> None:
        self._by_platform[platform] = remover

    def unregister(self, platform: str, remover: PostRemover) -> None:
        if self._by_platform.get(platform) is remover:
            del self._by_platform[platform]

    async def remove(self, posts: Sequence[Post]) -> Removal:
        """Remove these messages, each on its own platform; never raises."""
        total = Removal()
        for platform in dict.fromkeys(post.platform for post in posts):
            mine = [post for post in posts if post.platform == platform]
            remover = self._by_platform.get(platform)
            if remover is None:
                log.warning(
                    "%d %s message(s) not removed: that platform is not running here",
                    len(mine),
                    platform,
                )
                total += Removal(left=len(mine))
                continue
            for post in mine:
                try:
                    total += await remover.remove(post)
                except Exception:
                    log.exception("removing a %s message failed", platform)
                    total += Removal(left=1)
        return total
