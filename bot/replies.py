"""Every reply the command layer gives, with its wording written here: job events are worded
in `bot/jobs/events.py`, refusals of a mistyped option in `bot/commands/parse.py`, beside
the checks, and the labels of charts in `bot/charts/wording.py`.

Every text is written through gettext (`bot/i18n`), in the language being spoken when the
function is called: see LANGUAGES.md.

A reply is plain data: the text, whether only the person who asked should see it, images to
show, a chart, buttons to offer and, when a job was queued, its id (follow it with
`CommandLayer.follow`). Adapters render it; they never write their own wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from bot.i18n import N_, SHIPPED, _, duration, ngettext, now, number, translator
from bot.jobs.reasons import shown
from bot.posts import Removal
from bot.safety import SafetyLevel
from bot.styles import Style
from bot.ui import Button, ButtonStyle, Chart, ImageRef, JobSummary, job_buttons, short_id
from storage.records import Allowance, AuditRecord, JobState, JobStats

if TYPE_CHECKING:
    from bot.fleet.view import WorkerView
    from bot.views import Likeness

# The longest list reply: under Discord's 2000 characters (Telegram's limit is 4096).
MAX_LIST_CHARS = 1900


@dataclass(frozen=True)
class Reply:
    text: str
    private: bool = False
    images: tuple[ImageRef, ...] = ()
    buttons: tuple[Button, ...] = ()
    job_id: str | None = None
    # The command was refused and changed nothing (always private).
    refused: bool = False
    # A chart of what the text says (/admin stats), shown with it.
    chart: Chart | None = None


def internal_error(reference: str) -> str:
    return _(
        "Something went wrong on our side (ref {reference}): nothing was charged; try again.",
        reference=reference,
    )


def refused(message: str) -> Reply:
    """A refusal: nothing was done. Only the person who asked sees it."""
    return Reply(message, private=True, refused=True)


def who(user: str) -> str:
    return _("everyone") if user == "everyone" else _("user {user}", user=user)


def _when(at: datetime) -> str:
    # ISO's order reads the same everywhere; the time zone's name is the language's.
    return _("{when} UTC", when=at.strftime("%Y-%m-%d %H:%M"))


# A job's state, as a person reads it (the stored value when it is not one of these).
_STATES = {
    "queued": N_("queued"),
    "submitted": N_("submitted"),
    "processing": N_("processing"),
    "rehosting": N_("rehosting"),
    "succeeded": N_("succeeded"),
    "failed": N_("failed"),
    "cancelled": N_("cancelled"),
}


def _state(state: str) -> str:
    return _(_STATES[state]) if state in _STATES else state


# ---- generation ----------------------------------------------------------------------------


def queued(
    job_id: str, operation: str, style: str | None, *, reroll_of: str | None = None
) -> Reply:
    values = {
        "operation": operation.replace("_", " "),
        "style": style.replace("_", " ") if style else None,
        "job": short_id(job_id),
        "original": short_id(reroll_of) if reroll_of else None,
    }
    if style and reroll_of:
        text = _(
            "Got it: your {style} {operation} is queued as job {job} (a re-roll of job "
            "{original}). This message will show its progress.",
            **values,
        )
    elif style:
        text = _(
            "Got it: your {style} {operation} is queued as job {job}. "
            "This message will show its progress.",
            **values,
        )
    elif reroll_of:
        text = _(
            "Got it: your {operation} is queued as job {job} (a re-roll of job {original}). "
            "This message will show its progress.",
            **values,
        )
    else:
        text = _(
            "Got it: your {operation} is queued as job {job}. This message will show its progress.",
            **values,
        )
    return Reply(text, job_id=job_id)


def queued_before(job_id: str) -> Reply:
    """The same request, handled again after a crash: the job it queued the first time."""
    return Reply(
        _(
            "Got it: that is queued as job {job}. Its result will be shown here.",
            job=short_id(job_id),
        )
    )


def request_lost() -> str:
    return _(
        "Sorry: this request was lost in a restart and nothing was charged. Please send it again."
    )


def request_resumed(job_id: str) -> str:
    return _(
        "Your request is queued as job {job}; its result will be posted in this chat.",
        job=short_id(job_id),
    )


def banned_word(phrase: str) -> str:
    return _(
        "Your prompt contains “{phrase}”, which isn't allowed here: rephrase it and try again.",
        phrase=phrase,
    )


def banned(reason: str | None) -> str:
    if reason:
        return _(
            "You can't use this bot here ({reason}). Ask a moderator if you think this is a "
            "mistake.",
            reason=reason,
        )
    return _("You can't use this bot here. Ask a moderator if you think this is a mistake.")


def operation_disabled(operation: str) -> str:
    return _(
        "/{operation} is turned off here: ask a moderator, or see /help for the others.",
        operation=operation,
    )


def quota_exceeded(requested: int, allowance: Allowance, resets_in: str) -> str:
    if allowance.total == 0:
        return _(
            "You have no credits left: your daily allowance resets at 00:00 UTC (in {time}).",
            time=resets_in,
        )
    return ngettext(
        "You asked for {count} image but have {credits} left: ask for fewer, or wait; your "
        "daily allowance resets at 00:00 UTC (in {time}).",
        "You asked for {count} images but have {credits} left: ask for fewer, or wait; your "
        "daily allowance resets at 00:00 UTC (in {time}).",
        requested,
        credits=ngettext("{count} credit", "{count} credits", allowance.total),
        time=resets_in,
    )


def too_many_in_progress(active: int) -> str:
    return ngettext(
        "You already have {count} job in progress: wait for one to finish, then try again "
        "(/quota shows them).",
        "You already have {count} jobs in progress: wait for one to finish, then try again "
        "(/quota shows them).",
        active,
    )


def no_selfie() -> str:
    return _(
        "Attach a selfie (a clear, front-facing photo), or give a link to one with selfie_url."
    )


def upload_unreadable() -> str:
    return _("Your attachment couldn't be downloaded: attach it again and retry.")


def two_selfies() -> str:
    return _("Give the selfie once: attach it or give selfie_url, not both.")


def _minutes(seconds: float) -> str:
    """A wait of at least a minute, rounded to the minute: "5 min", "1 hr 30 min"."""
    return duration(60 * max(1, round(seconds / 60)))


def selfie_gone(retention_seconds: float) -> str:
    if retention_seconds <= 0:
        return _("Selfies are deleted as soon as a job ends here: send your selfie again.")
    return _(
        "That job's selfie is no longer kept (selfies are deleted {time} after a job ends): "
        "send your selfie again.",
        time=_minutes(retention_seconds),
    )


def no_face() -> str:
    return _(
        "I can't find a face in that photo: send a selfie with your face clear and facing "
        "the camera."
    )


def several_faces() -> str:
    return _(
        "I see more than one face in that photo: send a selfie with only you in it, or crop "
        "the others out."
    )


def face_too_small(px: int, min_px: int) -> str:
    return _(
        "Your face is too small in that photo ({px} px across; at least {min_px} px needed): "
        "send a closer selfie, or crop it around your face.",
        px=number(px),
        min_px=number(min_px),
    )


def faces_busy() -> str:
    return _("Too many selfies are being checked right now: try again in a minute.")


def face_check_failed() -> str:
    return _("I couldn't check the face in that photo just now: try again in a moment.")


def unlike_note(count: int, total: int) -> str:
    """A finished job's note on the images the identity gate failed, delivered all the same
    (the best of their attempts) and not charged for."""
    if count == total:
        return ngettext(
            "{count} image may not look like you: you are not charged for it.",
            "{count} images may not look like you: you are not charged for them.",
            count,
        )
    return ngettext(
        "{count} of {total} images may not look like you: you are not charged for it.",
        "{count} of {total} images may not look like you: you are not charged for them.",
        count,
        total=number(total),
    )


# ---- asking for what is missing (platforms whose commands arrive as messages) ----------------


def working() -> str:
    """Shown at once while a request is checked; the job's progress replaces it."""
    return _("Got it: one moment…")


def send_selfie(command: str, wait_seconds: float) -> str:
    return _(
        "Send me your selfie for /{command}: a clear, front-facing photo, as a photo or as a "
        "file. I'll wait {time}; /cancel to stop.",
        command=command,
        time=_minutes(wait_seconds),
    )


def selfie_wait_over(command: str) -> str:
    return _(
        "No photo came, so I stopped waiting: send /{command} again when you're ready.",
        command=command,
    )


def cancelled() -> str:
    return _("Cancelled: nothing was charged.")


def nothing_to_cancel() -> str:
    return _("There's nothing to cancel.")


# What Telegram calls a message that is not a photo (`adapters/telegram/incoming.py`).
_NOT_SELFIES = {
    "sticker": N_("A sticker can't be used as a selfie: send a photo (or an image as a file)."),
    "GIF": N_("A GIF can't be used as a selfie: send a photo (or an image as a file)."),
    "video": N_("A video can't be used as a selfie: send a photo (or an image as a file)."),
    "video message": N_(
        "A video message can't be used as a selfie: send a photo (or an image as a file)."
    ),
    "voice message": N_(
        "A voice message can't be used as a selfie: send a photo (or an image as a file)."
    ),
    "audio file": N_(
        "An audio file can't be used as a selfie: send a photo (or an image as a file)."
    ),
}


def not_a_selfie(kind: str) -> str:
    if kind in _NOT_SELFIES:
        return _(_NOT_SELFIES[kind])
    return _("That can't be used as a selfie: send a photo (or an image as a file).")


def not_your_photo() -> str:
    return _("Reply to a photo you sent yourself: other people's photos can't be used.")


def pick_style(command: str) -> str:
    return _(
        "Which style for your /{command}? (Default: this community's usual one.)",
        command=command,
    )


def default_style_label() -> str:
    return _("Default")


def choice_expired() -> str:
    return _("That choice has expired: send your selfie with /headshot again.")


def not_yours() -> str:
    return _("Those buttons belong to the person who asked: send your own /headshot.")


def unknown_button() -> str:
    return _("That button isn't valid: type /help to see the commands.")


def private_chat_needed() -> str:
    return _(
        "That answer is only for you, and I can't message you yet: open a private chat with me, "
        "press Start, then ask again."
    )


def sent_privately() -> str:
    return _("Sent to you in a private chat.")


# ---- the user's own things ----------------------------------------------------------------


def styles_list(styles: Sequence[Style], default: str) -> Reply:
    lines = [_("Styles (use them as style:<name>):")]
    for style in styles:
        description = style.shown_description()
        if style.name == default:
            line = _(
                "{name}: {description} (default here)", name=style.name, description=description
            )
        else:
            line = f"{style.name}: {description}"
        lines.append(f"• {line}")
    return Reply("\n".join(lines), private=True)


def _job_line(job: JobSummary, images: int) -> str:
    parts = [job.short_id, _when(job.created_at), job.operation]
    if job.style:
        parts.append(job.style)
    parts += [_state(job.state), _("seed {seed}", seed=job.seed)]
    if images:
        parts.append(ngettext("{count} image", "{count} images", images))
    if job.prompt:
        parts.append(_shorten(job.prompt, 40))
    return " · ".join(parts)


def _shorten(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _("“{text}”", text=text)


def history_page(
    entries: Sequence[tuple[JobSummary, Sequence[ImageRef]]], page: int, pages: int
) -> Reply:
    if not entries:
        text = _("No images yet: send /headshot with a selfie to make your first one.")
        if page > 1 and pages > 0:
            text = ngettext(
                "There is no page {page}: your history has {count} page.",
                "There is no page {page}: your history has {count} pages.",
                pages,
                page=page,
            )
        return Reply(text, private=True)
    lines = [_("Your jobs, newest first (page {page} of {pages}):", page=page, pages=pages)]
    lines += [f"• {_job_line(job, len(images))}" for job, images in entries]
    lines.append(_("See one in full with /show <job>."))
    buttons = []
    if page > 1:
        buttons.append(Button(_("Previous"), "history", {"page": str(page - 1)}))
    if page < pages:
        buttons.append(Button(_("Next"), "history", {"page": str(page + 1)}))
    images = tuple(image for _job, refs in entries for image in refs)
    return Reply("\n".join(lines), private=True, images=images, buttons=tuple(buttons))


def job_details(
    job: JobSummary, images: Sequence[ImageRef], likeness: Likeness | None = None
) -> Reply:
    title = [_("Job {job}", job=job.short_id), job.operation]
    if job.style:
        title.append(job.style)
    status = [
        _("Status: {state}", state=_state(job.state)),
        _("seed {seed}", seed=job.seed),
        _when(job.created_at),
    ]
    lines = [" · ".join(title), " · ".join(status)]
    if job.prompt:
        lines.append(_("Prompt: {prompt}", prompt=job.prompt))
    if job.error:
        lines.append(_("Why it failed: {reason}", reason=shown(job.error)))
    if likeness is not None:
        lines.append(_likeness(likeness))
    return Reply(
        "\n".join(lines),
        private=True,
        images=tuple(images),
        buttons=job_buttons(job.id) if JobState(job.state).finished else (),
    )


def _likeness(likeness: Likeness) -> str:
    measures = []
    for index, distance, passed in likeness.images:
        if distance is None:
            measure = _("image {number} no face found", number=index)
        else:
            measure = _("image {number} {distance}", number=index, distance=number(distance, 2))
        measures.append(measure + (" ✓" if passed else " ✗"))
    return _(
        "Likeness: {measures} (dlib distance to your selfie; {threshold} or less is the same "
        "person)",
        measures=", ".join(measures),
        threshold=number(likeness.threshold, 2),
    )


def no_such_job(ref: str) -> str:
    return _(
        "No job of yours matches “{ref}”: /history lists them (give at least 6 characters).",
        ref=ref,
    )


def still_running(job_id: str) -> str:
    return _("Job {job} is still running: delete it once it has finished.", job=short_id(job_id))


def deleted(job_id: str, images: int, removal: Removal | None = None) -> Reply:
    return Reply(
        ngettext(
            "Deleted job {job} and its {count} image.",
            "Deleted job {job} and its {count} images.",
            images,
            job=short_id(job_id),
        )
        + _not_removed(removal),
        private=True,
    )


def _not_removed(removal: Removal | None) -> str:
    """What of the bot's messages showing the images could not simply be deleted."""
    text = ""
    if removal is None:
        return text
    if removal.replaced:
        text += " " + ngettext(
            "{count} message of the bot's was too old to delete: its images now show a grey "
            "placeholder.",
            "{count} messages of the bot's were too old to delete: their images now show a grey "
            "placeholder.",
            removal.replaced,
        )
    if removal.left:
        text += " " + ngettext(
            "{count} message of the bot's could not be removed: delete it yourself where you can.",
            "{count} messages of the bot's could not be removed: delete them yourself where you "
            "can.",
            removal.left,
        )
    return text


def post_removed() -> str:
    """What a message too old to delete says in place of the image or result it showed."""
    return _("This image was deleted.")


def quota(
    *,
    daily_quota: int,
    daily_left: int,
    granted: int,
    resets_in: str,
    active: Sequence[tuple[str, str, int | None]],
) -> Reply:
    """`active`: (job id, state, queue position or None) for each job in progress."""
    if granted:
        today = ngettext(
            "Today: {left} of {count} image left plus {granted}.",
            "Today: {left} of {count} images left plus {granted}.",
            daily_quota,
            left=number(daily_left),
            granted=ngettext("{count} granted credit", "{count} granted credits", granted),
        )
    else:
        today = ngettext(
            "Today: {left} of {count} image left.",
            "Today: {left} of {count} images left.",
            daily_quota,
            left=number(daily_left),
        )
    resets = _("The allowance resets at 00:00 UTC (in {time}).", time=resets_in)
    lines = [f"{today} {resets}"]
    if not active:
        lines.append(_("Nothing in progress."))
    for job_id, state, position in active:
        if position:
            line = _(
                "job {job}: queued at position {position}",
                job=short_id(job_id),
                position=number(position),
            )
        else:
            line = _("job {job}: {state}", job=short_id(job_id), state=_state(state))
        lines.append(f"• {line}")
    return Reply("\n".join(lines), private=True)


def forget_ask(token: str, jobs: int, minutes: int) -> Reply:
    button = _("Delete everything")
    return Reply(
        ngettext(
            "This deletes everything we hold about you: {count} job, their images, your "
            "history, credits and settings. It cannot be undone. Press “{button}” within "
            "{time} to confirm.",
            "This deletes everything we hold about you: {count} jobs, their images, your "
            "history, credits and settings. It cannot be undone. Press “{button}” within "
            "{time} to confirm.",
            jobs,
            button=button,
            time=duration(60 * minutes),
        ),
        private=True,
        buttons=(Button(button, "forget", {"confirm": token}, ButtonStyle.DANGER),),
    )


def forget_nothing() -> Reply:
    return Reply(_("We hold nothing about you: there is nothing to delete."), private=True)


def forget_expired() -> str:
    return _("That confirmation has expired or isn't yours: run /forget again.")


def forget_busy(active: int) -> str:
    return ngettext(
        "You have {count} job in progress: run /forget again once it has finished.",
        "You have {count} jobs in progress: run /forget again once they have finished.",
        active,
    )


def forgotten(
    jobs: int, images: int, ledger: int, settings: int, removal: Removal | None = None
) -> Reply:
    removal = removal or Removal()
    values = {
        "jobs": ngettext("{count} job", "{count} jobs", jobs),
        "images": ngettext("{count} stored image", "{count} stored images", images),
        "records": ngettext("{count} credit record", "{count} credit records", ledger),
        "settings": ngettext("{count} setting", "{count} settings", settings),
    }
    if removal.removed:
        text = _(
            "Done: deleted {jobs}, {images}, {records} and {settings}, and removed {messages} of "
            "the bot's showing them. Nothing else about you is kept.",
            messages=ngettext("{count} message", "{count} messages", removal.removed),
            **values,
        )
    else:
        text = _(
            "Done: deleted {jobs}, {images}, {records} and {settings}. Nothing else about you "
            "is kept.",
            **values,
        )
    return Reply(text + _not_removed(removal), private=True)


# ---- languages ---------------------------------------------------------------------------------


def _codes() -> str:
    return ", ".join(code.replace("_", "-") for code in SHIPPED)


def language_shown(language: str) -> Reply:
    return Reply(
        _(
            "I answer you in {language}. Choose another with /language <code> ({codes}), or "
            "/language auto for your app's language.",
            language=translator(language).name,
            codes=_codes(),
        ),
        private=True,
    )


def language_chosen(language: str) -> Reply:
    return Reply(
        _(
            "From now on I answer you in {language}. /language auto goes back to your app's "
            "language.",
            language=translator(language).name,
        ),
        private=True,
    )


def language_automatic(language: str) -> Reply:
    return Reply(
        _(
            "I answer you in your app's language again: {language}.",
            language=translator(language).name,
        ),
        private=True,
    )


def community_language_set(language: str, community: bool) -> Reply:
    name = translator(language).name
    if community:
        return done(
            _(
                "People here whose own language I don't speak now read {language}, and so does "
                "what I say to this community.",
                language=name,
            )
        )
    return done(
        _(
            "Everywhere (global), people whose own language I don't speak now read {language} "
            "unless their community chose another.",
            language=name,
        )
    )


def no_such_language(code: str) -> str:
    return _("I don't speak “{code}”: choose one of {codes}.", code=code, codes=_codes())


def help_text(commands: Sequence[tuple[str, str]], admin: Sequence[str]) -> Reply:
    """Every command the person may use; moderators also get the admin commands, by name only
    (so that the whole text fits one chat message)."""
    lines = [_("Send /headshot with a selfie attached to get a professional headshot.")]
    lines += [f"• /{name}: {summary}" for name, summary in commands]
    if admin:
        lines.append(_("Moderators: /admin {commands}.", commands=", ".join(admin)))
    return Reply("\n".join(lines), private=True)


# ---- moderation -------------------------------------------------------------------------------


def not_moderator() -> str:
    return _("Only this community's moderators can use /admin commands.")


def owners_only_in_dm() -> str:
    return _(
        "Admin commands work in a server or group; in a DM only the bot's owners can use them."
    )


def owners_only(command: str) -> str:
    return _("Only the bot's owners can use /{command}.", command=command)


def done(text: str) -> Reply:
    return Reply(text, private=True)


def quota_set(user: str, per_day: int, community: bool) -> Reply:
    if user == "everyone" and community:
        text = ngettext(
            "Daily allowance for everyone here: {count} image per day.",
            "Daily allowance for everyone here: {count} images per day.",
            per_day,
        )
    elif user == "everyone":
        text = ngettext(
            "Daily allowance for everyone everywhere (global): {count} image per day.",
            "Daily allowance for everyone everywhere (global): {count} images per day.",
            per_day,
        )
    elif community:
        text = ngettext(
            "Daily allowance for user {user} here: {count} image per day.",
            "Daily allowance for user {user} here: {count} images per day.",
            per_day,
            user=user,
        )
    else:
        text = ngettext(
            "Daily allowance for user {user} everywhere (global): {count} image per day.",
            "Daily allowance for user {user} everywhere (global): {count} images per day.",
            per_day,
            user=user,
        )
    return done(text)


# What a moderator may not do to themselves (`bot/commands/admin.py` names the action).
_NOT_YOURSELF = {
    "grant credits to": N_(
        "You can't grant credits to yourself: ask another moderator or an owner."
    ),
    "ban": N_("You can't ban yourself: ask another moderator or an owner."),
    "refund": N_("You can't refund yourself: ask another moderator or an owner."),
}


def not_yourself(action: str) -> str:
    if action in _NOT_YOURSELF:
        return _(_NOT_YOURSELF[action])
    return _("You can't do that to yourself: ask another moderator or an owner.")


def not_a_word() -> str:
    return _("Give a word made of letters or digits.")


def granted(user: str, credits: int) -> Reply:
    return done(
        ngettext(
            "Gave user {user} {count} credit; it doesn't expire.",
            "Gave user {user} {count} credits; they don't expire.",
            credits,
            user=user,
        )
    )


def ban_result(user: str, changed: bool, community: bool) -> Reply:
    if not changed:
        if community:
            return done(_("User {user} was already banned here.", user=user))
        return done(_("User {user} was already banned everywhere (global).", user=user))
    if community:
        return done(_("User {user} is now banned here.", user=user))
    return done(_("User {user} is now banned everywhere (global).", user=user))


def unban_result(user: str, changed: bool, community: bool, banned_globally: bool) -> Reply:
    if not changed:
        if community:
            text = _("User {user} wasn't banned here.", user=user)
        else:
            text = _("User {user} wasn't banned everywhere (global).", user=user)
    elif banned_globally:
        text = _("Lifted the ban here.") if community else _("Lifted the ban everywhere (global).")
    elif community:
        return done(_("User {user} may use the bot here again.", user=user))
    else:
        return done(_("User {user} may use the bot everywhere (global) again.", user=user))
    if banned_globally:
        text += " " + _("A ban by the bot's operator still applies everywhere.")
    return done(text)


def operation_switched(operation: str, enabled: bool, changed: bool, community: bool) -> Reply:
    if enabled and not changed:
        text = (
            _("/{operation} was already on here.", operation=operation)
            if community
            else _("/{operation} was already on everywhere (global).", operation=operation)
        )
    elif enabled:
        text = (
            _("/{operation} is now on here.", operation=operation)
            if community
            else _("/{operation} is now on everywhere (global).", operation=operation)
        )
    elif not changed:
        text = (
            _("/{operation} was already off here.", operation=operation)
            if community
            else _("/{operation} was already off everywhere (global).", operation=operation)
        )
    else:
        text = (
            _("/{operation} is now off here.", operation=operation)
            if community
            else _("/{operation} is now off everywhere (global).", operation=operation)
        )
    return done(text)


def disabled_globally(operation: str) -> str:
    return _(
        "/{operation} is turned off by the bot's operator; only an owner can turn it on.",
        operation=operation,
    )


def style_default_set(style: str, community: bool) -> Reply:
    if community:
        return done(_("Jobs here now use the {style} style unless they name one.", style=style))
    return done(
        _(
            "Jobs everywhere (global) now use the {style} style unless they name one.",
            style=style,
        )
    )


def safety_set(level: SafetyLevel, community: bool) -> Reply:
    if community:
        return done(_("Flagged images here are now shown as: {level}.", level=str(level)))
    return done(
        _("Flagged images everywhere (global) are now shown as: {level}.", level=str(level))
    )


def safety_looser(current: SafetyLevel) -> str:
    stricter = [str(level) for level in SafetyLevel if level.rank > current.rank]
    return _(
        "The safety filter is already at “{current}”: a community can only make it stricter "
        "({levels}).",
        current=str(current),
        levels=", ".join(stricter) if stricter else _("none"),
    )


def banned_words_changed(word: str, added: bool, changed: bool, community: bool) -> Reply:
    if not changed and added:
        text = (
            _("“{word}” is already banned here.", word=word)
            if community
            else _("“{word}” is already banned everywhere (global).", word=word)
        )
    elif not changed:
        text = (
            _("“{word}” is not on the list here.", word=word)
            if community
            else _("“{word}” is not on the list everywhere (global).", word=word)
        )
    elif added:
        text = (
            _("Prompts with “{word}” are now refused here.", word=word)
            if community
            else _("Prompts with “{word}” are now refused everywhere (global).", word=word)
        )
    else:
        text = (
            _("Prompts with “{word}” are allowed again here.", word=word)
            if community
            else _("Prompts with “{word}” are allowed again everywhere (global).", word=word)
        )
    return done(text)


def banned_words_list(own: Sequence[str], inherited: Sequence[str]) -> Reply:
    if not own and not inherited:
        return done(_("No banned words. Add one with /admin banned-words add <word>."))
    lines = [_("Banned words: {words}.", words=", ".join(own)) if own else _("Banned words: none.")]
    if inherited:
        lines.append(_("Also banned by the operator: {words}.", words=", ".join(inherited)))
    return done("\n".join(lines))


def stats(report: JobStats, days: int, community: bool, chart: Chart | None = None) -> Reply:
    period = (
        ngettext("Last {count} day here", "Last {count} days here", days)
        if community
        else ngettext(
            "Last {count} day everywhere (global)", "Last {count} days everywhere (global)", days
        )
    )
    counts = {"succeeded": number(report.succeeded), "failed": number(report.failed)}
    if report.jobs:
        jobs = ngettext(
            "{count} job, {succeeded} succeeded, {failed} failed (success rate {rate}%).",
            "{count} jobs, {succeeded} succeeded, {failed} failed (success rate {rate}%).",
            report.jobs,
            rate=number(100 * report.succeeded / report.jobs),
            **counts,
        )
    else:
        jobs = ngettext(
            "{count} job, {succeeded} succeeded, {failed} failed (success rate n/a).",
            "{count} jobs, {succeeded} succeeded, {failed} failed (success rate n/a).",
            report.jobs,
            **counts,
        )
    median = report.median_generation_seconds
    lines = [
        _("{period}: {jobs}", period=period, jobs=jobs),
        _(
            "Credits used: {credits}. Median generation time: {median}.",
            credits=number(report.credits_used),
            median=now().seconds(median) if median is not None else _("n/a"),
        ),
    ]
    if report.top_users:
        top = ", ".join(f"{who(user)} ({number(count)})" for user, count in report.top_users)
        lines.append(_("Top users: {users}.", users=top))
    lines += _identity_gate(report)
    return Reply("\n".join(lines), private=True, chart=chart)


def _identity_gate(report: JobStats) -> list[str]:
    """The identity gate's lines of /admin stats: none when it measured nothing."""
    if not (report.identity_checks or report.identity_retries or report.delivered_unlike):
        return []
    parts = []
    if report.identity_checks:
        parts.append(
            ngettext(
                "{passed} of {count} image passed ({percent}%)",
                "{passed} of {count} images passed ({percent}%)",
                report.identity_checks,
                passed=number(report.identity_passed),
                percent=_percent(report.identity_passed, report.identity_checks),
            )
        )
    parts.append(ngettext("{count} retry", "{count} retries", report.identity_retries))
    parts.append(
        ngettext(
            "{count} delivered unlike (not charged)",
            "{count} delivered unlike (not charged)",
            report.delivered_unlike,
        )
    )
    lines = [_("Identity gate: {parts}.", parts=", ".join(parts))]
    lines += [
        "• "
        + _(
            "{operation} · {backend}: {passed}/{checks} passed ({percent}%)",
            operation=f.operation,
            backend=f.backend,
            passed=number(f.passed),
            checks=number(f.checks),
            percent=_percent(f.passed, f.checks),
        )
        for f in report.identity
    ]
    return lines


def _percent(part: int, whole: int) -> str:
    """A share as a whole percentage, the "%" left to the message."""
    # Never "100%" while one failed, nor "0%" while one passed: rounding must not hide them.
    percent = max(1 if part else 0, min(round(100 * part / whole), 99 if part < whole else 100))
    return number(percent)


def jobs_list(entries: Sequence[tuple[JobSummary, str]], failed_only: bool) -> Reply:
    if not entries:
        return done(_("No failed jobs.") if failed_only else _("No jobs yet."))
    lines = [_("Recent failed jobs:") if failed_only else _("Recent jobs:")]
    for job, user in entries:
        parts = [job.short_id, who(user), job.operation, _state(job.state)]
        if job.error:
            parts.append(shown(job.error))
        lines.append("• " + " · ".join(parts))
    lines.append(_("Refund one with /admin refund <job>."))
    return done("\n".join(lines))


def refund_result(job_id: str, user: str, credits: int, state: str) -> Reply:
    job = short_id(job_id)
    if credits:
        return done(
            ngettext(
                "Returned {count} credit to user {user} for job {job}.",
                "Returned {count} credits to user {user} for job {job}.",
                credits,
                user=user,
                job=job,
            )
        )
    if state == "succeeded":
        return done(_("Job {job} was already refunded.", job=job))
    if state == "failed":
        return done(_("Job {job} failed: its credits were already returned.", job=job))
    if state == "cancelled":
        return done(_("Job {job} cancelled: its credits were already returned.", job=job))
    return done(_("Job {job} is still running: refund it once it has finished.", job=job))


def no_such_community_job(ref: str) -> str:
    return _("No job here matches “{ref}”: /admin jobs lists them.", ref=ref)


def audit_page(entries: Sequence[AuditRecord], page: int) -> Reply:
    if not entries:
        return done(
            _("Nothing in the audit log yet.") if page == 1 else _("No page {page}.", page=page)
        )
    lines = [_("Audit log, newest first (page {page}):", page=page)]
    for entry in entries:
        target = f" → {entry.target}" if entry.target else ""
        details = ""
        if entry.details:
            details = " (" + ", ".join(f"{k}: {v}" for k, v in entry.details.items()) + ")"
        lines.append(f"• {_when(entry.at)} · {entry.actor} · {entry.action}{target}{details}")
    buttons = (Button(_("Older"), "admin audit", {"page": str(page + 1)}),)
    return Reply("\n".join(lines), private=True, buttons=buttons)


# ---- the GPU workers (owners) -------------------------------------------------------------------

_PROVIDER_NAMES = {"modelslab": "ModelsLab"}
# A host or device name longer than this is cut: a worker writes its own.
_MAX_NAME = 48


def no_gpu_workers() -> Reply:
    return done(_("This bot has no GPU workers: it generates with ModelsLab."))


def workers_list(workers: Sequence[WorkerView], fallback: str | None) -> Reply:
    """Live workers first, then draining ones, then the silent; as many as fit one message."""
    closing = []
    if fallback:
        name = _PROVIDER_NAMES.get(fallback, fallback)
        closing.append(
            _("Operations no live worker serves go to {name} (FALLBACK_BACKEND).", name=name)
        )
    if not workers:
        lines = [
            _(
                "No GPU worker has reported in yet: start one with `headshot-bot gpu-worker` "
                "(README: “Adding a GPU machine”)."
            )
        ]
        return done("\n".join(lines + closing))
    live = [w for w in workers if w.live]
    room = sum(w.capacity for w in live)
    lines = [
        ngettext(
            "GPU workers: {live} live of {total}, room for {count} job at once.",
            "GPU workers: {live} live of {total}, room for {count} jobs at once.",
            room,
            live=number(len(live)),
            total=number(len(workers)),
        )
    ]
    ordered = sorted(workers, key=lambda w: 0 if w.live else 1 if not w.silent else 2)
    more = _more(9999)
    budget = MAX_LIST_CHARS - sum(len(line) + 1 for line in (*lines, *closing, more))
    for shown_count, worker in enumerate(ordered):
        line = _worker_line(worker)
        if len(line) + 1 > budget:
            lines.append(_more(len(ordered) - shown_count))
            break
        budget -= len(line) + 1
        lines.append(line)
    return done("\n".join(lines + closing))


def _more(count: int) -> str:
    return "• " + ngettext("and {count} more", "and {count} more", count)


def _worker_line(worker: WorkerView) -> str:
    jobs = [ngettext("{count} job done", "{count} jobs done", worker.jobs_done)]
    if worker.jobs_failed:
        jobs.append(ngettext("{count} failed", "{count} failed", worker.jobs_failed))
    jobs.append(
        _("{seconds}/image", seconds=now().seconds(worker.seconds_per_image))
        if worker.seconds_per_image is not None
        else _("no images yet")
    )
    parts = [
        _cut(worker.host),
        _cut(worker.device),
        ", ".join(worker.operations) or _("no operations"),
        ", ".join(jobs),
        _worker_state(worker),
    ]
    return "• " + " · ".join(parts)


def _worker_state(worker: WorkerView) -> str:
    if worker.child:
        if not worker.live:
            return _("the bot's own process, stopped (it starts again with the next job)")
        last = worker.last_job_age
        if last is None:
            return _("the bot's own process")
        return _("the bot's own process, last job {time} ago", time=duration(last))
    age = duration(worker.heartbeat_age or 0.0)
    if worker.silent:
        if worker.draining:
            return _("not heard from for {time} (it was draining)", time=age)
        return _("not heard from for {time}", time=age)
    if worker.draining:
        return _("draining: finishing its jobs, last heartbeat {time} ago", time=age)
    return _("last heartbeat {time} ago", time=age)


def _cut(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"
