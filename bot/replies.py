"""Every reply the command layer gives, with its wording written here: job events are worded
in `bot/jobs/events.py`, refusals of a mistyped option in `bot/commands/parse.py`, beside
the checks, and the labels of charts in `bot/charts/wording.py`.

A reply is plain data: the text, whether only the person who asked should see it, images to
show, a chart, buttons to offer and, when a job was queued, its id (follow it with
`CommandLayer.follow`). Adapters render it; they never write their own wording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

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
    return f"Something went wrong on our side (ref {reference}): nothing was charged; try again."


def refused(message: str) -> Reply:
    """A refusal: nothing was done. Only the person who asked sees it."""
    return Reply(message, private=True, refused=True)


def who(user: str) -> str:
    return "everyone" if user == "everyone" else f"user {user}"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# ---- generation ----------------------------------------------------------------------------


def queued(
    job_id: str, operation: str, style: str | None, *, reroll_of: str | None = None
) -> Reply:
    what = f"{style} {operation}" if style else operation
    again = f" (a re-roll of job {short_id(reroll_of)})" if reroll_of else ""
    return Reply(
        f"Got it: your {what.replace('_', ' ')} is queued as job {short_id(job_id)}{again}. "
        "This message will show its progress.",
        job_id=job_id,
    )


def queued_before(job_id: str) -> Reply:
    """The same request, handled again after a crash: the job it queued the first time."""
    return Reply(
        f"Got it: that is queued as job {short_id(job_id)}. Its result will be shown here."
    )


def request_lost() -> str:
    return (
        "Sorry: this request was lost in a restart and nothing was charged. Please send it again."
    )


def request_resumed(job_id: str) -> str:
    return (
        f"Your request is queued as job {short_id(job_id)}; its result will be posted in this chat."
    )


def banned_word(phrase: str) -> str:
    return f"Your prompt contains “{phrase}”, which isn't allowed here: rephrase it and try again."


def banned(reason: str | None) -> str:
    why = f" ({reason})" if reason else ""
    return f"You can't use this bot here{why}. Ask a moderator if you think this is a mistake."


def operation_disabled(operation: str) -> str:
    return f"/{operation} is turned off here: ask a moderator, or see /help for the others."


def quota_exceeded(requested: int, allowance: Allowance, resets_in: str) -> str:
    resets = f"your daily allowance resets at 00:00 UTC (in {resets_in})"
    if allowance.total == 0:
        return f"You have no credits left: {resets}."
    return (
        f"You asked for {requested} images but have {allowance.total} credit(s) left: "
        f"ask for fewer, or wait; {resets}."
    )


def too_many_in_progress(active: int) -> str:
    return (
        f"You already have {_plural(active, 'job')} in progress: wait for one to finish, then "
        "try again (/quota shows them)."
    )


def no_selfie() -> str:
    return "Attach a selfie (a clear, front-facing photo), or give a link to one with selfie_url."


def upload_unreadable() -> str:
    return "Your attachment couldn't be downloaded: attach it again and retry."


def two_selfies() -> str:
    return "Give the selfie once: attach it or give selfie_url, not both."


def selfie_gone(retention_seconds: float) -> str:
    if retention_seconds <= 0:
        return "Selfies are deleted as soon as a job ends here: send your selfie again."
    minutes = max(1, round(retention_seconds / 60))
    return (
        f"That job's selfie is no longer kept (selfies are deleted {minutes} min after "
        "a job ends): send your selfie again."
    )


def no_face() -> str:
    return (
        "I can't find a face in that photo: send a selfie with your face clear and facing "
        "the camera."
    )


def several_faces() -> str:
    return (
        "I see more than one face in that photo: send a selfie with only you in it, or crop "
        "the others out."
    )


def face_too_small(px: int, min_px: int) -> str:
    return (
        f"Your face is too small in that photo ({px} px across; at least {min_px} px needed): "
        "send a closer selfie, or crop it around your face."
    )


def faces_busy() -> str:
    return "Too many selfies are being checked right now: try again in a minute."


def face_check_failed() -> str:
    return "I couldn't check the face in that photo just now: try again in a moment."


def unlike_note(count: int, total: int) -> str:
    """A finished job's note on the images the identity gate failed, delivered all the same
    (the best of their attempts) and not charged for."""
    images = _plural(count, "image") if count == total else f"{count} of {total} images"
    if count == 1:
        return f"{images} may not look like you: you are not charged for it."
    return f"{images} may not look like you: you are not charged for them."


# ---- asking for what is missing (platforms whose commands arrive as messages) ----------------


def working() -> str:
    """Shown at once while a request is checked; the job's progress replaces it."""
    return "Got it: one moment…"


def send_selfie(command: str, wait_seconds: float) -> str:
    minutes = max(1, round(wait_seconds / 60))
    return (
        f"Send me your selfie for /{command}: a clear, front-facing photo, as a photo or as a "
        f"file. I'll wait {minutes} min; /cancel to stop."
    )


def selfie_wait_over(command: str) -> str:
    return f"No photo came, so I stopped waiting: send /{command} again when you're ready."


def cancelled() -> str:
    return "Cancelled: nothing was charged."


def nothing_to_cancel() -> str:
    return "There's nothing to cancel."


def not_a_selfie(kind: str) -> str:
    return f"A {kind} can't be used as a selfie: send a photo (or an image as a file)."


def not_your_photo() -> str:
    return "Reply to a photo you sent yourself: other people's photos can't be used."


def pick_style(command: str) -> str:
    return f"Which style for your /{command}? (Default: this community's usual one.)"


def default_style_label() -> str:
    return "Default"


def choice_expired() -> str:
    return "That choice has expired: send your selfie with /headshot again."


def not_yours() -> str:
    return "Those buttons belong to the person who asked: send your own /headshot."


def unknown_button() -> str:
    return "That button isn't valid: type /help to see the commands."


def private_chat_needed() -> str:
    return (
        "That answer is only for you, and I can't message you yet: open a private chat with me, "
        "press Start, then ask again."
    )


def sent_privately() -> str:
    return "Sent to you in a private chat."


# ---- the user's own things ----------------------------------------------------------------


def styles_list(styles: Sequence[Style], default: str) -> Reply:
    lines = ["Styles (use them as style:<name>):"]
    for style in styles:
        mark = " (default here)" if style.name == default else ""
        lines.append(f"• {style.name}: {style.description}{mark}")
    return Reply("\n".join(lines), private=True)


def _job_line(job: JobSummary, images: int) -> str:
    parts = [job.short_id, _when(job.created_at), job.operation]
    if job.style:
        parts.append(job.style)
    parts += [job.state, f"seed {job.seed}"]
    if images:
        parts.append(_plural(images, "image"))
    if job.prompt:
        parts.append(_shorten(job.prompt, 40))
    return " · ".join(parts)


def _shorten(text: str, limit: int) -> str:
    return f"“{text}”" if len(text) <= limit else f"“{text[: limit - 1]}…”"


def history_page(
    entries: Sequence[tuple[JobSummary, Sequence[ImageRef]]], page: int, pages: int
) -> Reply:
    if not entries:
        text = "No images yet: send /headshot with a selfie to make your first one."
        if page > 1 and pages > 0:
            text = f"There is no page {page}: your history has {_plural(pages, 'page')}."
        return Reply(text, private=True)
    lines = [f"Your jobs, newest first (page {page} of {pages}):"]
    lines += [f"• {_job_line(job, len(images))}" for job, images in entries]
    lines.append("See one in full with /show <job>.")
    buttons = []
    if page > 1:
        buttons.append(Button("Previous", "history", {"page": str(page - 1)}))
    if page < pages:
        buttons.append(Button("Next", "history", {"page": str(page + 1)}))
    images = tuple(image for _, refs in entries for image in refs)
    return Reply("\n".join(lines), private=True, images=images, buttons=tuple(buttons))


def job_details(
    job: JobSummary, images: Sequence[ImageRef], likeness: Likeness | None = None
) -> Reply:
    lines = [f"Job {job.short_id} · {job.operation}" + (f" · {job.style}" if job.style else "")]
    lines.append(f"Status: {job.state} · seed {job.seed} · {_when(job.created_at)}")
    if job.prompt:
        lines.append(f"Prompt: {job.prompt}")
    if job.error:
        lines.append(f"Why it failed: {job.error}")
    if likeness is not None:
        lines.append(_likeness(likeness))
    return Reply(
        "\n".join(lines),
        private=True,
        images=tuple(images),
        buttons=job_buttons(job.id) if JobState(job.state).finished else (),
    )


def _likeness(likeness: Likeness) -> str:
    measures = ", ".join(
        f"image {number} "
        + (f"{distance:.2f}" if distance is not None else "no face found")
        + (" ✓" if passed else " ✗")
        for number, distance, passed in likeness.images
    )
    return (
        f"Likeness: {measures} (dlib distance to your selfie; {likeness.threshold:.2f} or less "
        "is the same person)"
    )


def no_such_job(ref: str) -> str:
    return f"No job of yours matches “{ref}”: /history lists them (give at least 6 characters)."


def still_running(job_id: str) -> str:
    return f"Job {short_id(job_id)} is still running: delete it once it has finished."


def deleted(job_id: str, images: int, removal: Removal | None = None) -> Reply:
    return Reply(
        f"Deleted job {short_id(job_id)} and its {_plural(images, 'image')}."
        + _not_removed(removal),
        private=True,
    )


def _not_removed(removal: Removal | None) -> str:
    """What of the bot's messages showing the images could not simply be deleted."""
    text = ""
    if removal is None:
        return text
    if removal.replaced:
        one = removal.replaced == 1
        text += (
            f" {_plural(removal.replaced, 'message')} of the bot's "
            f"{'was' if one else 'were'} too old to delete: "
            f"{'its images now show' if one else 'their images now show'} a grey placeholder."
        )
    if removal.left:
        text += (
            f" {_plural(removal.left, 'message')} of the bot's could not be removed: "
            f"delete {'it' if removal.left == 1 else 'them'} yourself where you can."
        )
    return text


def post_removed() -> str:
    """What a message too old to delete says in place of the image or result it showed."""
    return "This image was deleted."


def quota(
    *,
    daily_quota: int,
    daily_left: int,
    granted: int,
    resets_in: str,
    active: Sequence[tuple[str, str, int | None]],
) -> Reply:
    """`active`: (job id, state, queue position or None) for each job in progress."""
    extra = f" plus {_plural(granted, 'granted credit')}" if granted else ""
    lines = [
        f"Today: {daily_left} of {daily_quota} images left{extra}. "
        f"The allowance resets at 00:00 UTC (in {resets_in})."
    ]
    if not active:
        lines.append("Nothing in progress.")
    for job_id, state, position in active:
        where = f"queued at position {position}" if position else state
        lines.append(f"• job {short_id(job_id)}: {where}")
    return Reply("\n".join(lines), private=True)


def forget_ask(token: str, jobs: int, minutes: int) -> Reply:
    return Reply(
        f"This deletes everything we hold about you: {_plural(jobs, 'job')}, their images, your "
        "history, credits and settings. It cannot be undone. Press “Delete everything” within "
        f"{minutes} minutes to confirm.",
        private=True,
        buttons=(Button("Delete everything", "forget", {"confirm": token}, ButtonStyle.DANGER),),
    )


def forget_nothing() -> Reply:
    return Reply("We hold nothing about you: there is nothing to delete.", private=True)


def forget_expired() -> str:
    return "That confirmation has expired or isn't yours: run /forget again."


def forget_busy(active: int) -> str:
    return (
        f"You have {_plural(active, 'job')} in progress: run /forget again once "
        f"{'it has' if active == 1 else 'they have'} finished."
    )


def forgotten(
    jobs: int, images: int, ledger: int, settings: int, removal: Removal | None = None
) -> Reply:
    removal = removal or Removal()
    removed = (
        f", and removed {_plural(removal.removed, 'message')} of the bot's showing them"
        if removal.removed
        else ""
    )
    return Reply(
        f"Done: deleted {_plural(jobs, 'job')}, {_plural(images, 'stored image')}, "
        f"{_plural(ledger, 'credit record')} and {_plural(settings, 'setting')}{removed}. "
        "Nothing else about you is kept." + _not_removed(removal),
        private=True,
    )


def help_text(commands: Sequence[tuple[str, str]], admin: Sequence[str]) -> Reply:
    """Every command the person may use; moderators also get the admin commands, by name only
    (so that the whole text fits one chat message)."""
    lines = ["Send /headshot with a selfie attached to get a professional headshot."]
    lines += [f"• /{name}: {summary}" for name, summary in commands]
    if admin:
        lines.append("Moderators: /admin " + ", ".join(admin) + ".")
    return Reply("\n".join(lines), private=True)


# ---- moderation -------------------------------------------------------------------------------


def not_moderator() -> str:
    return "Only this community's moderators can use /admin commands."


def owners_only_in_dm() -> str:
    return "Admin commands work in a server or group; in a DM only the bot's owners can use them."


def owners_only(command: str) -> str:
    return f"Only the bot's owners can use /{command}."


def _scope(community: bool) -> str:
    return "here" if community else "everywhere (global)"


def done(text: str) -> Reply:
    return Reply(text, private=True)


def quota_set(user: str, per_day: int, community: bool) -> Reply:
    allowance = _plural(per_day, "image")
    return done(f"Daily allowance for {who(user)} {_scope(community)}: {allowance} per day.")


def not_yourself(action: str) -> str:
    return f"You can't {action} yourself: ask another moderator or an owner."


def not_a_word() -> str:
    return "Give a word made of letters or digits."


def granted(user: str, credits: int) -> Reply:
    return done(f"Gave {who(user)} {_plural(credits, 'credit')}; they don't expire.")


def ban_result(user: str, changed: bool, community: bool) -> Reply:
    if not changed:
        return done(f"{who(user).capitalize()} was already banned {_scope(community)}.")
    return done(f"{who(user).capitalize()} is now banned {_scope(community)}.")


def unban_result(user: str, changed: bool, community: bool, banned_globally: bool) -> Reply:
    still = " A ban by the bot's operator still applies everywhere." if banned_globally else ""
    if not changed:
        return done(f"{who(user).capitalize()} wasn't banned {_scope(community)}.{still}")
    if banned_globally:
        return done(f"Lifted the ban {_scope(community)}.{still}")
    return done(f"{who(user).capitalize()} may use the bot {_scope(community)} again.")


def operation_switched(operation: str, enabled: bool, changed: bool, community: bool) -> Reply:
    state = "on" if enabled else "off"
    if not changed:
        return done(f"/{operation} was already {state} {_scope(community)}.")
    return done(f"/{operation} is now {state} {_scope(community)}.")


def disabled_globally(operation: str) -> str:
    return f"/{operation} is turned off by the bot's operator; only an owner can turn it on."


def style_default_set(style: str, community: bool) -> Reply:
    return done(f"Jobs {_scope(community)} now use the {style} style unless they name one.")


def safety_set(level: SafetyLevel, community: bool) -> Reply:
    return done(f"Flagged images {_scope(community)} are now shown as: {level}.")


def safety_looser(current: SafetyLevel) -> str:
    return (
        f"The safety filter is already at “{current}”: a community can only make it stricter "
        f"({', '.join(level for level in SafetyLevel if level.rank > current.rank) or 'none'})."
    )


def banned_words_changed(word: str, added: bool, changed: bool, community: bool) -> Reply:
    if not changed:
        state = "already banned" if added else "not on the list"
        return done(f"“{word}” is {state} {_scope(community)}.")
    action = "now refused" if added else "allowed again"
    return done(f"Prompts with “{word}” are {action} {_scope(community)}.")


def banned_words_list(own: Sequence[str], inherited: Sequence[str]) -> Reply:
    if not own and not inherited:
        return done("No banned words. Add one with /admin banned-words add <word>.")
    lines = [f"Banned words: {', '.join(own) if own else 'none'}."]
    if inherited:
        lines.append(f"Also banned by the operator: {', '.join(inherited)}.")
    return done("\n".join(lines))


def stats(report: JobStats, days: int, community: bool, chart: Chart | None = None) -> Reply:
    rate = f"{100 * report.succeeded / report.jobs:.0f}%" if report.jobs else "n/a"
    median = (
        f"{report.median_generation_seconds:.1f} s"
        if report.median_generation_seconds is not None
        else "n/a"
    )
    lines = [
        f"Last {_plural(days, 'day')} {_scope(community)}: {_plural(report.jobs, 'job')}, "
        f"{report.succeeded} succeeded, {report.failed} failed (success rate {rate}).",
        f"Credits used: {report.credits_used}. Median generation time: {median}.",
    ]
    if report.top_users:
        top = ", ".join(f"{who(user)} ({count})" for user, count in report.top_users)
        lines.append(f"Top users: {top}.")
    lines += _identity_gate(report)
    return Reply("\n".join(lines), private=True, chart=chart)


def _identity_gate(report: JobStats) -> list[str]:
    """The identity gate's lines of /admin stats: none when it measured nothing."""
    if not (report.identity_checks or report.identity_retries or report.delivered_unlike):
        return []
    parts = []
    if report.identity_checks:
        parts.append(
            f"{report.identity_passed} of {_plural(report.identity_checks, 'image')} passed "
            f"({_percent(report.identity_passed, report.identity_checks)})"
        )
    retries = report.identity_retries
    parts.append(f"{retries} {'retry' if retries == 1 else 'retries'}")
    parts.append(f"{report.delivered_unlike} delivered unlike (not charged)")
    lines = [f"Identity gate: {', '.join(parts)}."]
    lines += [
        f"• {f.operation} · {f.backend}: {f.passed}/{f.checks} passed "
        f"({_percent(f.passed, f.checks)})"
        for f in report.identity
    ]
    return lines


def _percent(part: int, whole: int) -> str:
    # Never "100%" while one failed, nor "0%" while one passed: rounding must not hide them.
    percent = max(1 if part else 0, min(round(100 * part / whole), 99 if part < whole else 100))
    return f"{percent}%"


def jobs_list(entries: Sequence[tuple[JobSummary, str]], failed_only: bool) -> Reply:
    if not entries:
        return done("No failed jobs." if failed_only else "No jobs yet.")
    lines = ["Recent failed jobs:" if failed_only else "Recent jobs:"]
    for job, user in entries:
        line = f"• {job.short_id} · {who(user)} · {job.operation} · {job.state}"
        if job.error:
            line += f" · {job.error}"
        lines.append(line)
    lines.append("Refund one with /admin refund <job>.")
    return done("\n".join(lines))


def refund_result(job_id: str, user: str, credits: int, state: str) -> Reply:
    if credits:
        return done(
            f"Returned {_plural(credits, 'credit')} to {who(user)} for job {short_id(job_id)}."
        )
    if state == "succeeded":
        return done(f"Job {short_id(job_id)} was already refunded.")
    if state in ("failed", "cancelled"):
        return done(f"Job {short_id(job_id)} {state}: its credits were already returned.")
    return done(f"Job {short_id(job_id)} is still running: refund it once it has finished.")


def no_such_community_job(ref: str) -> str:
    return f"No job here matches “{ref}”: /admin jobs lists them."


def audit_page(entries: Sequence[AuditRecord], page: int) -> Reply:
    if not entries:
        return done("Nothing in the audit log yet." if page == 1 else f"No page {page}.")
    lines = [f"Audit log, newest first (page {page}):"]
    for entry in entries:
        target = f" → {entry.target}" if entry.target else ""
        details = ""
        if entry.details:
            details = " (" + ", ".join(f"{k}: {v}" for k, v in entry.details.items()) + ")"
        lines.append(f"• {_when(entry.at)} · {entry.actor} · {entry.action}{target}{details}")
    buttons = (Button("Older", "admin audit", {"page": str(page + 1)}),)
    return Reply("\n".join(lines), private=True, buttons=buttons)


# ---- the GPU workers (owners) -------------------------------------------------------------------

_PROVIDER_NAMES = {"modelslab": "ModelsLab"}
# A host or device name longer than this is cut: a worker writes its own.
_MAX_NAME = 48


def no_gpu_workers() -> Reply:
    return done("This bot has no GPU workers: it generates with ModelsLab.")


def workers_list(workers: Sequence[WorkerView], fallback: str | None) -> Reply:
    """Live workers first, then draining ones, then the silent; as many as fit one message."""
    closing = []
    if fallback:
        name = _PROVIDER_NAMES.get(fallback, fallback)
        closing.append(f"Operations no live worker serves go to {name} (FALLBACK_BACKEND).")
    if not workers:
        lines = [
            "No GPU worker has reported in yet: start one with `headshot-bot gpu-worker` "
            "(README: “Adding a GPU machine”)."
        ]
        return done("\n".join(lines + closing))
    live = [w for w in workers if w.live]
    room = sum(w.capacity for w in live)
    lines = [
        f"GPU workers: {len(live)} live of {len(workers)}, room for {_plural(room, 'job')} at once."
    ]
    ordered = sorted(workers, key=lambda w: 0 if w.live else 1 if not w.silent else 2)
    more = "• and 9999 more"
    budget = MAX_LIST_CHARS - sum(len(line) + 1 for line in (*lines, *closing, more))
    for shown, worker in enumerate(ordered):
        line = _worker_line(worker)
        if len(line) + 1 > budget:
            lines.append(f"• and {len(ordered) - shown} more")
            break
        budget -= len(line) + 1
        lines.append(line)
    return done("\n".join(lines + closing))


def _worker_line(worker: WorkerView) -> str:
    jobs = f"{_plural(worker.jobs_done, 'job')} done"
    if worker.jobs_failed:
        jobs += f", {worker.jobs_failed} failed"
    speed = (
        f"{worker.seconds_per_image:.1f} s/image"
        if worker.seconds_per_image is not None
        else "no images yet"
    )
    parts = [
        _cut(worker.host),
        _cut(worker.device),
        ", ".join(worker.operations) or "no operations",
        f"{jobs}, {speed}",
        _worker_state(worker),
    ]
    return "• " + " · ".join(parts)


def _worker_state(worker: WorkerView) -> str:
    if worker.child:
        if not worker.live:
            return "the bot's own process, stopped (it starts again with the next job)"
        last = worker.last_job_age
        return "the bot's own process" + (f", last job {_ago(last)}" if last is not None else "")
    age = worker.heartbeat_age or 0.0
    if worker.silent:
        gone = f"not heard from for {_duration(age)}"
        return gone + (" (it was draining)" if worker.draining else "")
    if worker.draining:
        return f"draining: finishing its jobs, last heartbeat {_ago(age)}"
    return f"last heartbeat {_ago(age)}"


def _ago(seconds: float) -> str:
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def _cut(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 1] + "…"
