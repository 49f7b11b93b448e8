"""The console frontend: a terminal that behaves like one chat channel.

Replies stream to stdout token by token; progress and notices go to stderr so that
stdout carries only the conversation (useful when piping).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
import threading
from pathlib import Path
from typing import TextIO

from bot.frontends.intake import SHUTTING_DOWN, Intake, Question
from bot.host import Host
from bot.text import ordinal

CHANNEL = "console"


class ConsoleStream:
    thinking_style = "console"  # a reasoning model's thinking, when shown: marked lines

    def __init__(self, out: TextIO, header: str = "", show_footer: bool = True, show_errors: bool = True,
                 err: TextIO | None = None):
        self._out = out
        self._err = err
        self._show_footer = show_footer
        self._show_errors = show_errors
        self._wrote_any = False
        self.ended = False
        if header:
            self._print(header + "\n")

    def _print(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    async def write(self, delta: str) -> None:
        self._wrote_any = True
        self._print(delta)

    async def finish(self, footer: str) -> None:
        self.ended = True
        shown = f"[{footer}]\n" if footer and self._show_footer else ""
        self._print(("\n" if self._wrote_any else "") + shown)

    async def fail(self, message: str) -> None:
        self.ended = True
        shown = f"error: {message}\n" if self._show_errors else ""
        self._print(("\n" if self._wrote_any else "") + shown)

    def stop(self, why: str) -> None:
        """The answer was stopped midway: its text so far stays, and the reason ends it."""
        if not self.ended:
            self.ended = True
            self._print(("\n" if self._wrote_any else "") + f"[{why}]\n")

    async def queued(self, position: int) -> None:
        if position > 0 and self._err is not None:
            self._err.write(f"… queued: {ordinal(position)}\n")
            self._err.flush()


class ConsoleReply:
    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr, show_footer: bool = True,
                 show_errors: bool = True, attachments_dir: Path | None = None):
        """show_footer/show_errors off: stdout carries only the reply (`modelbot ask`)."""
        self.out, self.err = out, err
        self.attachments_dir = attachments_dir or Path(tempfile.gettempdir()) / "modelbot"
        self.show_footer, self.show_errors = show_footer, show_errors
        self._streams: list[ConsoleStream] = []

    async def send(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    async def send_file(self, filename: str, content: str | bytes, caption: str = "") -> None:
        # A terminal has no attachments: save the file and say where, instead of flooding the screen.
        self.attachments_dir.mkdir(parents=True, exist_ok=True)
        path = self.attachments_dir / Path(filename).name
        if isinstance(content, bytes):  # a picture (/layers' PNG)
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        self.out.write(f"[{caption or 'attachment'} saved to {path}]\n")
        self.out.flush()

    async def progress(self, text: str) -> None:
        self.err.write(f"… {text}\n")
        self.err.flush()

    def stream(self, header: str = "") -> ConsoleStream:
        stream = ConsoleStream(self.out, header, self.show_footer, self.show_errors, self.err)
        self._streams.append(stream)
        return stream

    # what the intake needs: a terminal has no placeholder to post and nothing left open
    async def start(self) -> bool:
        return True

    async def close(self, stopped: str | None = None) -> None:
        open_streams = [stream for stream in self._streams if not stream.ended]
        self._streams.clear()
        if not stopped:
            return
        for stream in open_streams:  # the answer ends where it was, with why
            stream.stop(stopped)
        if not open_streams:  # stopped before its first word
            self.out.write(f"[{stopped}]\n")
            self.out.flush()

    def abandon(self) -> None:
        pass


class ConsoleFrontend:
    """The terminal as a frontend: lines are read as they come (one reader thread) and answered
    one at a time; a stop ends the answer in progress and tells the lines still waiting."""

    def __init__(self, host: Host, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.host = host
        self.stdin, self.out, self.err = stdin, out, err
        self.reply = ConsoleReply(out, err)
        self.intake = Intake(host, frontend="console", model_switch="everyone")
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def run(self) -> None:
        """Read lines until EOF or /quit; each line is a message in the console channel."""
        interactive = self.stdin.isatty()
        self._start_reader()
        model = self.host.channel_model(CHANNEL).name
        self.err.write(f"modelbot console — model {model}. /help for commands, /quit or Ctrl-D to leave.\n")
        for number in itertools.count():
            if not self.intake.accepting:
                break  # stopping: drain() tells the lines still waiting
            if interactive:
                self.out.write("you> ")
                self.out.flush()
            line = await self._lines.get()
            if line is None:
                break
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            await self.intake.answer(Question(key=number, channel=CHANNEL, user="console", text=text,
                                              host_keeps_history=True), self.reply)

    async def drain(self, timeout: float) -> int:
        """Stop the answer in progress with the shutdown notice; say so for each line still waiting."""
        late = await self.intake.shutdown(timeout)
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line and line.strip() and line.strip() not in ("/quit", "/exit"):
                await self.reply.close(f"not answered: {SHUTTING_DOWN}: {line.strip()[:60]}")
        self._lines.put_nowait(None)  # run() ends at its next read
        return late

    async def close(self) -> None:
        await self.drain(0.1)

    def _start_reader(self) -> None:
        """A daemon thread, so that a blocked read never keeps the process from exiting."""
        loop = asyncio.get_running_loop()

        def read() -> None:
            while True:
                try:
                    line = self.stdin.readline()
                except (OSError, ValueError):  # stdin closed under us
                    line = ""
                try:
                    loop.call_soon_threadsafe(self._lines.put_nowait, line or None)
                except RuntimeError:  # the loop is closed: the bot has stopped
                    return
                if not line:
                    return

        threading.Thread(target=read, name="modelbot-console-input", daemon=True).start()


async def run_console(host: Host, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """Read lines until EOF or /quit; each line is a message in the console channel."""
    await ConsoleFrontend(host, stdin, out, err).run()
