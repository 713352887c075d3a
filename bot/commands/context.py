"""Who is asking, where, and the services a command may use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.config import Settings
from bot.fetch import SafeFetcher
from bot.fleet.view import FleetView
from bot.generation import GenerationService
from bot.health import Readiness
from bot.jobs.engine import JobEngine
from bot.jobs.event_bus import EventBus
from bot.metrics import Metrics
from bot.policy import Policy, resolve
from bot.posts import PostRemovers
from storage.accounts import AccountRepository
from storage.audit import AuditRepository
from storage.bans import BanRepository
from storage.confirmations import ConfirmationRepository
from storage.coordination import Coordination
from storage.deliveries import DeliveryRepository
from storage.history import HistoryRepository
from storage.imagestore import ImageStore
from storage.inbox import InboxRepository
from storage.interactions import InteractionRepository
from storage.jobs import JobRepository
from storage.posts import PostRepository
from storage.pseudonyms import Pseudonyms
from storage.records import AuditNote, BanRecord, UserRecord
from storage.settings import SettingsRepository
from storage.standing import Standing, StandingRepository
from storage.stats import StatsRepository
from storage.waits import WaitRepository


@dataclass(frozen=True)
class Actor:
    """The person running a command, as the adapter saw them."""

    platform: str
    user_id: str
    # The server or group the command ran in; None in a DM.
    community_id: str | None = None
    # The adapter's word on whether this person moderates that community (server permission,
    # group admin). The command layer decides what a moderator may do.
    is_moderator: bool = False
    # The language the platform says this person reads ("de", "es-419", Telegram's "pt-br", a
    # terminal's LANG); None when it says none.
    locale: str | None = None

    @property
    def key(self) -> str:
        """How the audit log names a person."""
        return f"{self.platform}:{self.user_id}"


@dataclass(frozen=True)
class CommandRequest:
    actor: Actor
    command: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # Where the adapter will show the result of a job this command queues (its own address
    # for it, never a token); kept with the job until `CommandLayer.delivered`.
    deliver_to: Mapping[str, Any] | None = None
    # What the platform handed over to ask this (an update, an interaction), as a key that is
    # the same each time it is handled: a job it queues is queued once.
    request_key: str | None = None


@dataclass(frozen=True)
class Services:
    settings: Settings
    accounts: AccountRepository
    jobs: JobRepository
    history: HistoryRepository
    scoped: SettingsRepository
    bans: BanRepository
    audit: AuditRepository
    stats: StatsRepository
    deliveries: DeliveryRepository
    store: ImageStore
    engine: JobEngine
    events: EventBus
    generation: GenerationService
    fetcher: SafeFetcher
    confirmations: ConfirmationRepository
    pseudonyms: Pseudonyms
    image_base_url: str
    coordination: Coordination
    waits: WaitRepository
    inbox: InboxRepository
    interactions: InteractionRepository
    posts: PostRepository
    standing: StandingRepository
    # Each running chat adapter's way to remove its platform's messages (registered at start).
    removers: PostRemovers = field(default_factory=PostRemovers)
    # The GPU workers, for /admin workers; None: this bot has none (ModelsLab alone).
    fleet: FleetView | None = None
    # What the service counts (adapters count what reaches and leaves their platform).
    metrics: Metrics = field(default_factory=Metrics)
    # Where an adapter says whether its gateway is connected (`/readyz`); None: not served.
    readiness: Readiness | None = None


@dataclass
class Context:
    """One command's view of the world: the services, the actor, and where they are."""

    services: Services
    actor: Actor
    is_owner: bool
    # Our id for the actor's community (None in a DM).
    community_id: int | None
    # Where the adapter will show a queued job's result (see `CommandRequest.deliver_to`).
    deliver_to: Mapping[str, Any] | None = None
    request_key: str | None = None
    _standing: Standing | None = field(default=None, init=False, repr=False)

    @property
    def in_community(self) -> bool:
        return self.community_id is not None

    async def standing(self) -> Standing:
        """The actor's standing here (user, settings, ban), read once per command, in one
        transaction: a command's checks see one moment of it."""
        if self._standing is None:
            self._standing = await self.services.standing.read(
                platform=self.actor.platform,
                platform_user_id=self.actor.user_id,
                subject=self.subject(self.actor.user_id),
                community_id=self.community_id,
            )
        return self._standing

    async def known_user(self) -> UserRecord | None:
        return (await self.standing()).user

    async def policy(self, user_id: int | None) -> Policy:
        """The policy for `user_id` here: the actor's from their standing, anyone else's read."""
        standing = await self.standing()
        if user_id == (standing.user.id if standing.user else None):
            rows = standing.settings
        else:
            rows = await self.services.scoped.for_context(
                user_id=user_id, community_id=self.community_id
            )
        return resolve(
            rows,
            user_id=user_id,
            community_id=self.community_id,
            default_quota=self.services.settings.daily_quota,
        )

    async def ban(self) -> BanRecord | None:
        """The ban that keeps the actor from generating here (global or this community's)."""
        return (await self.standing()).ban

    def subject(self, platform_user_id: str) -> str:
        """The keyed pseudonym of a person on the actor's platform (what bans are stored by)."""
        return self.services.pseudonyms.subject(self.actor.platform, platform_user_id)

    def audit(self, action: str, target: str | None = None, **details: Any) -> AuditNote:
        return AuditNote(
            actor=self.actor.key,
            action=action,
            target=target,
            community_id=self.community_id,
            details=details or None,
        )

    def person(self, platform_user_id: str) -> str:
        """How the audit log names another person on the actor's platform."""
        return f"{self.actor.platform}:{platform_user_id}"
