"""The console frontend: a terminal that behaves like one chat channel.

Replies stream to stdout token by token; progress and notices go to stderr so that
stdout carries only the conversation (useful when piping).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from bot.frontends.intake import Intake, Question
from bot.host import Host
from bot.text import ordinal

CHANNEL = "console"


class ConsoleStream:
    def __init__(self, out: TextIO, header: str = "", show_footer: bool = True, show_errors: bool = True,
                 err: TextIO | None = None):
        self._out = out
        self._err = err
        self._show_footer = show_footer
        self._show_errors = show_errors
        self._wrote_any = False
        if header:
            self._print(header + "\n")

    def _print(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    async def write(self, delta: str) -> None:
        self._wrote_any = True
        self._print(delta)

    async def finish(self, footer: str) -> None:
        shown = f"[{footer}]\n" if footer and self._show_footer else ""
        self._print(("\n" if self._wrote_any else "") + shown)

    async def fail(self, message: str) -> None:
        shown = f"error: {message}\n" if self._show_errors else ""
        self._print(("\n" if self._wrote_any else "") + shown)

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

    async def send(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    async def send_file(self, filename: str, content: str, caption: str = "") -> None:
        # A terminal has no attachments: save the file and say where, instead of flooding the screen.
        self.attachments_dir.mkdir(parents=True, exist_ok=True)
        path = self.attachments_dir / Path(filename).name
        path.write_text(content, encoding="utf-8")
        self.out.write(f"[{caption or 'attachment'} saved to {path}]\n")
        self.out.flush()

    async def progress(self, text: str) -> None:
        self.err.write(f"… {text}\n")
        self.err.flush()

    def stream(self, header: str = "") -> ConsoleStream:
        return ConsoleStream(self.out, header, self.show_footer, self.show_errors, self.err)

    # what the intake needs: a terminal has no placeholder to post and nothing left open
    async def start(self) -> bool:
        return True

    async def close(self, stopped: str | None = None) -> None:
        if stopped:
            self.err.write(f"… {stopped}\n")
            self.err.flush()

    def abandon(self) -> None:
        pass


async def run_console(host: Host, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """Read lines until EOF or /quit; each line is a message in the console channel."""
    interactive = stdin.isatty()
    reply = ConsoleReply(out, err)
    intake = Intake(host, frontend="console", model_switch="everyone")
    model = host.channel_model(CHANNEL).name
    err.write(f"modelbot console — model {model}. /help for commands, /quit or Ctrl-D to leave.\n")
    for number in itertools.count():
        if interactive:
            out.write("you> ")
            out.flush()
        line = await asyncio.to_thread(stdin.readline)
        if not line:
            break
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if not text:
            continue
        await intake.answer(Question(key=number, channel=CHANNEL, user="console", text=text,
                                     host_keeps_history=True), reply)
