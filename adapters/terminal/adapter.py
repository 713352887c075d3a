"""The terminal chat: one person, the operator, typing commands into the command layer.

It only translates, like the Discord and Telegram adapters: a typed line (with image paths) or
a pressed button becomes a command, and the replies and job events come back as printed lines,
with images saved as files and their paths printed. The command layer decides everything.
"""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from adapters.delivery import show_until_done, take_over_deliveries
from adapters.terminal import texts
from adapters.terminal.buttons import ButtonBoard
from adapters.terminal.folder import ImageFolder
from adapters.terminal.typed import take_files
from bot import replies
from bot.commands import Actor, CommandLayer
from bot.jobs.events import FINAL_EVENTS, Completed, Failed, JobEvent
from bot.replies import Reply
from bot.ui import Button, Chart, ImageRef, short_id

log = logging.getLogger(__name__)

PLATFORM = "terminal"
USER = "operator"
# The person at the terminal runs the bot: the launcher makes them an owner (see `OWNER_IDS`).
OPERATOR = f"{PLATFORM}:{USER}"
# Where a job's result goes: this terminal, whichever run of it is open when the job ends.
DELIVER_TO: Mapping[str, Any] = {"chat": PLATFORM}
QUIT_WORDS = frozenset({"quit", "exit"})


def _print(text: str) -> None:
    print(text, flush=True)


class TerminalChat:
    name = "the terminal"

    def __init__(
        self,
        layer: CommandLayer,
        folder: ImageFolder,
        *,
        demo: bool = False,
        write: Callable[[str], None] = _print,
        locale: str | None = None,
    ) -> None:
        """`locale`: the terminal's language, as `LANG` gives it ("de_DE.UTF-8")."""
        self.layer = layer
        self.folder = folder
        self._demo = demo
        self._write = write
        self.actor = Actor(PLATFORM, USER, locale=locale)
        self._board = ButtonBoard()
        self._followers: dict[str, asyncio.Task[None]] = {}

    @property
    def running(self) -> int:
        """How many jobs this chat is still waiting on."""
        return sum(not task.done() for task in self._followers.values())

    async def start(self) -> None:
        """Greet, then show what the last run of the chat still owed (jobs that ended after
        it quit)."""
        async with self.layer.answering(self.actor):
            self._write(texts.welcome(self.folder.path, self._demo))
        await take_over_deliveries(
            self.layer, PLATFORM, lambda target: target, lambda job_id, _: self._follow(job_id)
        )

    async def stop(self) -> None:
        followers = list(self._followers.values())
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)

    async def run(self, lines: AsyncIterator[str]) -> None:
        """Handle typed lines until /quit; at the end of input, wait for the jobs first (a
        script piped in sees its results)."""
        async for line in lines:
            if not await self.handle(line):
                async with self.layer.answering(self.actor):
                    self._write(texts.leaving(self.running))
                return
        if self.running:
            async with self.layer.answering(self.actor):
                self._write(texts.waiting_for(self.running))
            await asyncio.gather(*self._followers.values(), return_exceptions=True)
        async with self.layer.answering(self.actor):
            self._write(texts.leaving(0))

    async def handle(self, line: str) -> bool:
        """Run one typed line, answered in the operator's language; False when it asks to
        leave."""
        async with self.layer.answering(self.actor):
            return await self._handle(line)

    async def _handle(self, line: str) -> bool:
        text = line.strip()
        if not text:
            return True
        word, _, rest = text.removeprefix("/").partition(" ")
        word = word.lower()
        if word in QUIT_WORDS:
            return False
        if word == "press":
            await self._press(rest)
        else:
            await self._command(text)
            if word == "help":
                self._write(texts.terminal_help(self.folder.path))
        return True

    async def _command(self, text: str) -> None:
        typed = take_files(text, self.layer.command_of_line(text))
        attachments: dict[str, bytes] = {}
        for option, path in typed.files.items():
            data = await self._read(path)
            if data is None:
                return
            attachments[option] = data
        reply = await self.layer.run_line(
            self.actor, typed.text, attachments or None, deliver_to=DELIVER_TO
        )
        await self._show_reply(reply)
        if reply.text == replies.no_selfie():  # "attach", said the way a terminal does it
            self._write(texts.give_a_path())

    async def _press(self, typed: str) -> None:
        button = self._board.find(typed)
        if button is None:
            self._write(texts.no_such_button(typed))
            return
        reply = await self.layer.run_line(self.actor, button.encode(), deliver_to=DELIVER_TO)
        await self._show_reply(reply)

    async def _read(self, path: Path) -> bytes | None:
        """The file's bytes, or None once the reason it can't be used is printed."""
        try:
            found = await asyncio.to_thread(path.stat)
            if not stat.S_ISREG(found.st_mode):
                self._write(texts.unreadable_file(path, texts.not_a_file()))
                return None
            # The size first, as a platform's word on an attachment: the command layer checks
            # the bytes in full.
            refusal = self.layer.check_upload(None, found.st_size, None)
            if refusal is not None:
                self._write(refusal.text)
                return None
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            self._write(texts.no_such_file(path))
        except OSError as exc:
            self._write(texts.unreadable_file(path, exc.strerror or type(exc).__name__))
        return None

    async def _show_reply(self, reply: Reply) -> None:
        self._write(reply.text)
        await self._show_images(reply.images)
        if reply.chart is not None:
            await self._show_chart(reply.chart)
        self._show_buttons(reply.buttons)
        if reply.job_id is not None:
            self._follow(reply.job_id)

    def _follow(self, job_id: str) -> None:
        if job_id not in self._followers:
            self._followers[job_id] = asyncio.create_task(
                self._follow_job(job_id), name=f"terminal-job-{job_id}"
            )

    async def _follow_job(self, job_id: str) -> None:
        try:
            await self._show_job(job_id)
        except Exception:
            log.exception("job %s: showing its progress failed", job_id)
            self._write(_about(job_id, texts.lost_track(short_id(job_id))))

    async def _show_job(self, job_id: str) -> None:
        final: JobEvent | None = None
        last = ""
        async for event in self.layer.follow(job_id):
            if isinstance(event, FINAL_EVENTS):
                final = event
                break
            if event.text != last:
                last = event.text
                self._write(_about(job_id, event.text))
        await show_until_done(self.layer, job_id, final, self._show_final)

    async def _show_final(self, event: JobEvent) -> bool:
        self._write(_about(event.job_id, event.text))
        images = event.images if isinstance(event, Completed) else ()
        if not await self._show_images(images):
            return False
        self._show_buttons(event.buttons if isinstance(event, Completed | Failed) else ())
        return True

    async def _show_images(self, images: Sequence[ImageRef]) -> bool:
        """Save and print each image; False (with the reason printed) if one could not be."""
        for image in images:
            try:
                path = await self.folder.save(image, await self.layer.image(image))
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                self._write(texts.image_not_saved(self.folder.path, reason))
                return False
            self._write(texts.image_saved(path))
        return True

    async def _show_chart(self, chart: Chart) -> None:
        try:
            path = await self.folder.save_chart(chart)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self._write(texts.image_not_saved(self.folder.path, reason))
            return
        self._write(texts.chart_saved(path))

    def _show_buttons(self, buttons: Sequence[Button]) -> None:
        line = self._board.show(buttons)
        if line:
            self._write(f"  {line}   (/press <number>)")


def _about(job_id: str, text: str) -> str:
    return f"[job {short_id(job_id)}] {text}"
