"""`headshot-bot chat`: the terminal chat adapter, as a newcomer runs it (a real process fed on
stdin) and in-process against the service; and what `run` says at start."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from adapters.terminal import ImageFolder, TerminalChat
from adapters.terminal.typed import take_files
from backends.modelslab.simulator import Simulator
from bot import replies
from bot.app import HeadshotApp
from bot.commands.spec import find_command
from bot.i18n import translator
from tests.conftest import EXAMPLE_SELFIE, AppFactory
from tests.pseudo import opening

STEP_SECONDS = 60


class Process:
    """`python -m bot ARGS` with stdin to type into and stdout read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._seen = 0
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str, cwd: Path, env: dict[str, str]) -> Process:
        unset = ("MODELSLAB_", "DATA", "DISCORD_", "TELEGRAM_", "LC_", "LANG")
        clean = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            *args,
            cwd=cwd,
            env={**clean, "PYTHONPATH": str(Path(__file__).parent.parent), **env},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))
            self._new.set()
        self._new.set()

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())

    async def expect(self, pattern: str) -> re.Match[str]:
        """The next line (after the last one expected) that matches `pattern`."""

        async def find() -> re.Match[str]:
            while True:
                for index in range(self._seen, len(self.lines)):
                    match = re.search(pattern, self.lines[index])
                    if match:
                        self._seen = index + 1
                        return match
                if self._reader.done():
                    raise AssertionError(f"no line matches {pattern!r}: {self.lines}")
                self._new.clear()
                await self._new.wait()

        try:
            return await asyncio.wait_for(find(), STEP_SECONDS)
        except TimeoutError:
            raise AssertionError(f"no line matches {pattern!r}: {self.lines}") from None

    async def ended(self) -> tuple[int, str]:
        """The exit status and everything on stderr."""
        assert self.process.stderr is not None
        errors = await asyncio.wait_for(self.process.stderr.read(), STEP_SECONDS)
        status = await asyncio.wait_for(self.process.wait(), STEP_SECONDS)
        await self._reader
        return status, errors.decode()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@pytest.fixture
async def chat_process(tmp_path: Path, database_url: str) -> AsyncIterator[Process]:
    """`headshot-bot chat --demo` in an empty folder, as a newcomer starts it."""
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url}
    env["IMAGE_STORE_SHARED"] = "1"  # one machine, also on PostgreSQL
    process = await Process.start("chat", "--demo", cwd=tmp_path, env=env)
    try:
        yield process
    finally:
        process.kill()


def assert_image(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        assert image.format == "JPEG" and image.width > 0


async def test_a_newcomer_types_the_commands_and_gets_the_image(
    chat_process: Process, tmp_path: Path
) -> None:
    chat = chat_process
    await chat.expect(r"Headshot Bot chat: you are the operator")
    chat.type(f"/headshot {EXAMPLE_SELFIE}")
    job = (await chat.expect(r"queued as job (\w+)\. This message will show its progress"))[1]
    await chat.expect(rf"^\[job {job}\] Generating your image, about \d+ sec…")
    await chat.expect(rf"^\[job {job}\] Done: 1 image · corporate · seed \d+ · job {job}\.")
    image = Path((await chat.expect(r"^  image: (.+)$"))[1])
    assert image.parent == tmp_path / "out"
    assert_image(image)
    buttons = await chat.expect(r"^  \[(\d+)\] Re-roll  \[(\d+)\] Delete   \(/press <number>\)")
    chat.type("/history")
    await chat.expect(r"^Your jobs, newest first \(page 1 of 1\):")
    await chat.expect(rf"^• {job} · .* · headshot · corporate · succeeded · seed \d+ · 1 image")
    assert Path((await chat.expect(r"^  image: (.+)$"))[1]) == image
    chat.type("/quota")
    await chat.expect(r"^Today: 4 of 5 images left\. The allowance resets at 00:00 UTC")
    chat.type("/admin stats")
    await chat.expect(r"^Last 7 days everywhere \(global\): 1 job, 1 succeeded, 0 failed")
    chart = Path((await chat.expect(r"^  chart: (.+)$"))[1])
    assert chart.parent == tmp_path / "out" and chart.name.startswith("stats-")
    with Image.open(chart) as picture:
        assert (picture.format, picture.size) == ("PNG", (1000, 750))
    chat.type(f"/press {buttons[1]}")  # Re-roll
    again = (await chat.expect(rf"queued as job (\w+) \(a re-roll of job {job}\)"))[1]
    await chat.expect(rf"^\[job {again}\] Done: 1 image")
    assert_image(Path((await chat.expect(r"^  image: (.+)$"))[1]))
    chat.type(f"/press {buttons[2]}")  # Delete, on the first result
    await chat.expect(rf"^Deleted job {job} and its 1 image\.")
    chat.type("/quit")
    await chat.expect(r"^Bye\.$")
    status, errors = await chat.ended()
    assert status == 0, errors
    assert "Traceback" not in errors


async def test_the_terminal_speaks_the_language_of_lang(tmp_path: Path, database_url: str) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url}
    env |= {"IMAGE_STORE_SHARED": "1", "LANG": "de_DE.UTF-8"}
    chat = await Process.start("chat", "--demo", cwd=tmp_path, env=env)
    try:
        welcome = opening(
            "de",
            "Headshot Bot chat: you are the operator; images come from the built-in simulator "
            "(demo: no API key, no charge) and are saved in {folder}. Try /headshot "
            "examples/astronaut.jpg, /help for more, /quit to leave.",
        )
        await chat.expect("^" + re.escape(welcome))
        chat.type("/quota")
        today = opening(
            "de", "Today: {left} of {count} image left.", "Today: {left} of {count} images left."
        )
        await chat.expect("^" + re.escape(today))
        chat.type("/quit")
        await chat.expect("^" + re.escape(translator("de").gettext("Bye.")) + "$")
        status, errors = await chat.ended()
        assert status == 0, errors
    finally:
        chat.kill()


async def test_commands_piped_in_see_their_jobs_end(tmp_path: Path, database_url: str) -> None:
    """At the end of the input the chat waits for the jobs it started, so a script of commands
    gets its results."""
    env = {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": database_url}
    env["IMAGE_STORE_SHARED"] = "1"
    chat = await Process.start("chat", "--demo", "--out", "shots", cwd=tmp_path, env=env)
    try:
        chat.type(f"/headshot {EXAMPLE_SELFIE} studio smiling")
        assert chat.process.stdin is not None
        chat.process.stdin.close()
        await chat.expect(r"queued as job")
        await chat.expect(r"^Waiting for 1 job to finish")
        await chat.expect(r"Done: 1 image · studio · seed")
        assert_image(Path((await chat.expect(r"^  image: (.+)$"))[1]))
        await chat.expect(r"^Bye\.$")
        status, errors = await chat.ended()
        assert status == 0, errors
        assert (tmp_path / "shots").is_dir()
    finally:
        chat.kill()


async def test_an_unwritable_out_folder_is_one_line_before_anything_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    env = {"DATA_DIR": str(tmp_path / "data")}
    chat = await Process.start("chat", "--demo", "--out", "taken", cwd=tmp_path, env=env)
    status, errors = await chat.ended()
    assert status == 2
    assert errors.strip().splitlines() == ["headshot-bot: --out taken is a file: name a folder"]


# ---- `run`: what it says at start ------------------------------------------------------------


async def _run_until(tmp_path: Path, said_last: str, **env: str) -> tuple[list[str], str]:
    """`headshot-bot run --demo` until it says `said_last`, then stopped with SIGINT: the lines
    it said until then, and the rest of its output. It must stop with status 0."""
    env = {"DATA_DIR": str(tmp_path / "data"), "WEB_PORT": "0", "LOG_LEVEL": "INFO", **env}
    run = await Process.start("run", "--demo", cwd=tmp_path, env=env)
    try:
        assert run.process.stderr is not None
        said: list[str] = []
        while not any(said_last in line for line in said):
            raw = await asyncio.wait_for(run.process.stderr.readline(), STEP_SECONDS)
            assert raw, said
            said.append(raw.decode())
        run.process.send_signal(signal.SIGINT)
        status, rest = await run.ended()
    finally:
        run.kill()
    assert status == 0, rest
    return said, rest


async def test_run_without_tokens_points_to_the_terminal_chat_and_logs_its_address_once(
    tmp_path: Path,
) -> None:
    said, rest = await _run_until(tmp_path, "no chat platform token set")
    everything = "".join(said) + rest
    addresses = set(re.findall(r"http://127\.0\.0\.1:\d+", everything))
    assert addresses, everything
    for address in addresses:
        assert everything.count(address) == 1, everything
    pointer = next(line for line in said if "no chat platform token set" in line)
    assert "DISCORD_TOKEN" in pointer and "TELEGRAM_BOT_TOKEN" in pointer
    assert "headshot-bot chat --demo" in pointer


async def test_run_on_uvloop_when_event_loop_says_so(tmp_path: Path) -> None:
    said, _ = await _run_until(tmp_path, "listening on http://", EVENT_LOOP="uvloop")
    assert any(line.rstrip().endswith("event loop: uvloop") for line in said), said


async def test_an_unknown_event_loop_is_one_line(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), "EVENT_LOOP": "trio"}
    run = await Process.start("run", "--demo", cwd=tmp_path, env=env)
    status, errors = await run.ended()
    assert status == 2
    [line] = errors.strip().splitlines()
    assert line.startswith("headshot-bot: invalid setting EVENT_LOOP: "), line


# ---- the adapter in-process --------------------------------------------------------------------


class Screen:
    """What the terminal printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(text.splitlines())

    def matching(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in self.lines if (m := re.search(pattern, line))]

    async def wait_for(self, pattern: str) -> re.Match[str]:
        async def seen() -> re.Match[str]:
            while not self.matching(pattern):
                await asyncio.sleep(0.02)
            return self.matching(pattern)[0]

        try:
            return await asyncio.wait_for(seen(), STEP_SECONDS)
        except TimeoutError:
            raise AssertionError(f"never printed {pattern!r}: {self.lines}") from None


async def terminal(app: HeadshotApp, tmp_path: Path) -> tuple[TerminalChat, Screen]:
    screen = Screen()
    (tmp_path / "out").mkdir(exist_ok=True)
    folder = ImageFolder(tmp_path / "out")
    chat = TerminalChat(app.commands, folder, write=screen.write)
    await chat.start()
    return chat, screen


async def test_what_cannot_be_used_is_said_in_one_line(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = await make_app()
    chat, screen = await terminal(app, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    try:
        for line in (
            "/headshot missing.jpg",
            f"/headshot selfie={notes}",
            f"/headshot selfie={tmp_path}",
            "/press 7",
            "/press",
            "/headshot studio",
        ):
            assert await chat.handle(line)
    finally:
        await chat.stop()
    assert screen.lines[1:] == [
        "No such file: missing.jpg. Give the path of a JPEG, PNG, WebP or HEIC image.",
        screen.lines[2],
        f"Can't read {tmp_path} (not a file): check the path and its permissions.",
        "No button 7: type /press and a number shown in [ ].",
        "No button given: type /press and a number shown in [ ].",
        # The command layer's words, then how to say it here.
        replies.no_selfie(),
        "Here, give your selfie's path: /headshot examples/astronaut.jpg (or selfie=PATH).",
    ]
    # The command layer's own refusal of a file that is not an image, as in any chat.
    assert screen.lines[2].startswith("That file isn't an image"), screen.lines
    assert not list((tmp_path / "out").iterdir())


async def test_progress_shows_the_queue_then_generating_then_done(
    make_app: AppFactory, simulator: Simulator, tmp_path: Path
) -> None:
    simulator.config.processing_seconds = 1.0
    app = await make_app(modelslab_max_queued=1)  # one at a time: the second one waits
    chat, screen = await terminal(app, tmp_path)
    try:
        assert await chat.handle(f"/headshot {EXAMPLE_SELFIE}")
        assert await chat.handle(f"/headshot {EXAMPLE_SELFIE} studio")
        first, second = (match[1] for match in screen.matching(r"queued as job (\w+)"))
        for job in (first, second):
            await screen.wait_for(rf"^\[job {job}\] Done: 1 image")
        await chat.run(_no_more_lines())  # the end of input: waits for both to be shown
    finally:
        await chat.stop()
    said = [line for line in screen.lines if line.startswith(f"[job {second}]")]
    assert said[0].startswith(f"[job {second}] Queued: you're next"), said
    assert any(line.startswith(f"[job {second}] Generating your image, about") for line in said)
    assert len(screen.matching(r"^  image: ")) == 2


async def _no_more_lines() -> AsyncIterator[str]:
    """An input that has ended."""
    for line in ():
        yield line


async def test_a_job_running_at_quit_is_shown_the_next_time(
    make_app: AppFactory, simulator: Simulator, tmp_path: Path
) -> None:
    simulator.config.processing_seconds = 1.5
    first = await make_app(selfie_retention_seconds=3600)
    chat, screen = await terminal(first, tmp_path)

    async def typed() -> AsyncIterator[str]:
        yield f"/headshot {EXAMPLE_SELFIE}"
        await screen.wait_for(r"Generating your image")
        yield "/quit"

    await chat.run(typed())
    await chat.stop()
    await first.stop()
    assert screen.lines[-1] == (
        "Bye. 1 job is still running: the result is shown the next time you chat."
    )
    job = screen.matching(r"queued as job (\w+)")[0][1]
    assert not screen.matching("Done:")

    second = await make_app(selfie_retention_seconds=3600)
    chat, screen = await terminal(second, tmp_path)
    try:
        await screen.wait_for(rf"^\[job {job}\] Done: 1 image")
        assert_image(Path((await screen.wait_for(r"^  image: (.+)$"))[1]))
    finally:
        await chat.stop()


async def test_help_adds_how_the_terminal_takes_files_and_buttons(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = await make_app(owner_ids="terminal:operator")  # what the launcher sets
    chat, screen = await terminal(app, tmp_path)
    assert await chat.handle("/help")
    assert not await chat.handle("/quit")
    await chat.stop()
    text = "\n".join(screen.lines)
    assert "• /headshot: Turn a selfie into a professional headshot" in text
    assert "Moderators: /admin " in text
    assert "attach an image by its path: /headshot examples/astronaut.jpg" in text
    assert "press a button with /press <number>" in text


# ---- reading a typed line ----------------------------------------------------------------------


def test_image_paths_become_attachments_and_the_rest_stays_typed() -> None:
    headshot, avatar = find_command("headshot"), find_command("avatar")
    typed = take_files("/headshot ~/me.JPG studio in a blue suit", headshot)
    assert typed.text == "/headshot studio in a blue suit"
    assert typed.files == {"selfie": Path("~/me.JPG").expanduser()}
    typed = take_files("/avatar me.png pose.webp samples=1", avatar)
    assert typed.text == "/avatar samples=1"
    assert typed.files == {"selfie": Path("me.png"), "pose_image": Path("pose.webp")}
    typed = take_files("/avatar pose_image=stance selfie=photos/face", avatar)
    assert typed.files == {"pose_image": Path("stance"), "selfie": Path("photos/face")}
    # A third path has no option to fill: the command layer reads it (and refuses it).
    assert take_files("/headshot a.jpg b.jpg", headshot).text == "/headshot b.jpg"
    # Commands that take no image are left as typed.
    assert take_files("/show abc.jpg", find_command("show")).text == "/show abc.jpg"
    assert take_files("/nonsense a.jpg", None).text == "/nonsense a.jpg"
