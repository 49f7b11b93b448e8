"""Files attached to a question: text files join the user's turn, labelled with their names;
anything else is refused with a message that says why.

A frontend describes each attachment as an AttachedFile (name, size and type as the
platform reports them, and how to download it); `read_text_files` checks and reads them
before anything is generated, and `with_files` builds the user's turn. The size is checked
before downloading, the content after (a .txt that is really binary is refused too), and
the tokens against the model's context by the host (`check_file_tokens`).
"""

from __future__ import annotations

import logging
import mimetypes
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePath

from bot.errors import UserFacingError
from bot.text import human_bytes

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 500_000  # per file: far more text than a small model's context holds
MAX_FILES = 5  # per message
# text the bot reads: prose, data, configuration and source code
TEXT_SUFFIXES = frozenset("""
    txt text md markdown rst adoc org log csv tsv json jsonl ndjson yaml yml toml ini cfg conf env properties xml
    html htm css scss svg tex bib
    py pyi ipynb js mjs cjs jsx ts tsx c h cc cpp cxx hpp hh cs java kt kts scala go rs rb php pl pm lua r jl
    swift m mm dart ex exs erl hs ml fs clj sql sh bash zsh fish ps1 bat cmd dockerfile makefile cmake gradle
    proto graphql vue svelte diff patch
""".split())
TEXT_NAMES = frozenset({"dockerfile", "makefile", "license", "readme", "changelog", "gemfile", "procfile"})
# types a platform may report for text whose name says nothing (no suffix, or one not listed above)
TEXT_TYPES = frozenset({
    "application/json", "application/ld+json", "application/x-ndjson", "application/xml", "application/yaml",
    "application/x-yaml", "application/toml", "application/javascript", "application/x-javascript",
    "application/x-sh", "application/x-shellscript", "application/sql", "application/x-python",
})
KINDS = "txt, md, csv, json, code"  # what the refusals say the bot reads


class FileRefused(UserFacingError):
    """An attachment the bot will not read (binary, too large, too many tokens); str() says
    which and why, for the chat."""


@dataclass(frozen=True)
class AttachedFile:
    """An attachment as the platform describes it, before it is downloaded."""

    name: str
    size: int  # bytes, as the platform reports them
    content_type: str | None
    read: Callable[[], Awaitable[bytes]]  # downloads it (raises on a platform error)


@dataclass(frozen=True)
class FileText:
    """A text file that was read: it joins the user's turn."""

    name: str
    text: str


def looks_like_text_name(name: str) -> bool:
    path = PurePath(name.lower())
    return path.suffix.lstrip(".") in TEXT_SUFFIXES or path.name in TEXT_NAMES


def is_text_type(content_type: str | None) -> bool:
    """text/*, JSON, XML, YAML and the like ("text/plain; charset=utf-8" counts)."""
    base = _base_type(content_type)
    return base.startswith("text/") or base in TEXT_TYPES or base.endswith(("+json", "+xml"))


async def read_text_files(files: list[AttachedFile]) -> list[FileText]:
    """Check and download the attachments; the first one that cannot be read raises FileRefused.
    Every name, type and size is checked before anything is downloaded."""
    if len(files) > MAX_FILES:
        raise FileRefused(f"I read at most {MAX_FILES} files in one message, and this one has {len(files)}. "
                          "Send them over several messages.")
    for file in files:
        _check_type(file)
        _check_size(file.name, file.size)
    return [await _read(file) for file in files]


def with_files(text: str, files: list[FileText]) -> str:
    """The user's turn: each file labelled with its name, then what the user wrote."""
    if not files:
        return text
    parts = [_labelled(f) for f in files]
    return "\n\n".join([*parts, text]) if text.strip() else "\n\n".join(parts)


def check_file_tokens(files: list[FileText], count_tokens: Callable[[str], int], budget: int, model: str) -> None:
    """Refuse files whose text alone would not leave room for the question and the reply.
    `count_tokens` counts a text's tokens with the model's tokenizer; `budget` is how many
    tokens the files may take in one message. The count is of each file as it joins the turn
    (its label included)."""
    if not files:
        return
    counts = [count_tokens(_labelled(f)) for f in files]
    total = sum(counts)
    if total <= budget:
        return
    room = (f"{model} can read about {_about(budget)} tokens of files in one message" if budget > 0
            else f"{model} has no room for files in one message")
    if len(files) == 1:
        raise FileRefused(f"{files[0].name} is {total:,} tokens; {room}: send a shorter part.")
    each = ", ".join(f"{f.name} {n:,}" for f, n in zip(files, counts))
    raise FileRefused(f"{_names(files)} are {total:,} tokens together ({each}); {room}: "
                      "send fewer or shorter files.")


# -- checks ---------------------------------------------------------------------------------------
def _check_type(file: AttachedFile) -> None:
    """By name first (what the user sees), then by the type the platform reported."""
    if looks_like_text_name(file.name):
        return
    suffix = PurePath(file.name).suffix
    guessed = mimetypes.guess_type(file.name)[0] if suffix else None
    if guessed and not is_text_type(guessed):  # photo.png, report.pdf: whatever the platform says
        raise FileRefused(_not_text(file.name, guessed))
    if is_text_type(file.content_type) or (guessed and is_text_type(guessed)):
        return  # no suffix (or one not listed), but the platform or the name says text
    raise FileRefused(_not_text(file.name, file.content_type or guessed))


def _check_size(name: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise FileRefused(f"{name} is {_size(size)}; I read files of up to {_size(MAX_FILE_BYTES)}. "
                          "Send a shorter part of it.")


async def _read(file: AttachedFile) -> FileText:
    try:
        data = await file.read()
    except FileRefused:
        raise  # the frontend already said what went wrong (e.g. a missing scope)
    except Exception as exc:  # noqa: BLE001 - whatever the platform's client raises: say which file
        log.warning("could not download attachment %r: %s: %s", file.name, type(exc).__name__, exc)
        raise FileRefused(f"I could not download {file.name} ({_reason(exc)}). Try attaching it again.") from exc
    _check_size(file.name, len(data))  # the platform's size was wrong
    return FileText(file.name, decode_text(file.name, data))


def decode_text(name: str, data: bytes) -> str:
    """UTF-8 (a BOM allowed), or UTF-16 with its BOM; binary content is refused."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"  # Windows tools write it (with a BOM); without one it looks binary
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        if b"\x00" in data:
            raise FileRefused(f"{name} is not a text file (it holds binary data), so I did not read it.") from None
        raise FileRefused(f"I could not read {name} as text: it is not UTF-8. "
                          "Save it as UTF-8 and attach it again.") from None
    if "\x00" in text:
        raise FileRefused(f"{name} is not a text file (it holds binary data), so I did not read it.")
    text = text.replace("\r\n", "\n")
    if not text.strip():
        raise FileRefused(f"{name} is empty: there is nothing in it to read.")
    return text


# -- wording --------------------------------------------------------------------------------------
def _labelled(file: FileText) -> str:
    """The file as it joins the turn: its name, then its text in a code fence longer than any
    run of backticks inside it (so that a Markdown file's own fences do not end it)."""
    longest = max((len(run) for run in re.findall(r"`+", file.text)), default=0)
    fence = "`" * max(3, longest + 1)
    name = " ".join(file.name.split())
    return f"File {name}:\n{fence}\n{file.text.rstrip()}\n{fence}"


def _not_text(name: str, content_type: str | None) -> str:
    kind = _kind(content_type)
    says = f"{name} looks like {kind}" if kind else f"{name} is not one of them"
    hint = {"a PDF": " Copy its text into a .txt file and attach that.",
            "an office document": " Save it as .txt, .md or .csv and attach that."}.get(kind or "", "")
    return f"I can read text files only ({KINDS}); {says}.{hint}"


def _kind(content_type: str | None) -> str | None:
    base = _base_type(content_type)
    major = base.split("/")[0]
    if major == "image":
        return "an image"
    if major == "audio":
        return "audio"
    if major == "video":
        return "a video"
    if base == "application/pdf":
        return "a PDF"
    if any(word in base for word in ("officedocument", "msword", "ms-excel", "ms-powerpoint", "opendocument",
                                     "rtf")):
        return "an office document"
    if any(word in base for word in ("zip", "tar", "gzip", "rar", "7z", "bzip", "xz", "java-archive")):
        return "an archive"
    if base:
        return "a binary file"
    return None


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"HTTP {status}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:120] if text else type(exc).__name__


def _size(n: int) -> str:
    """2_000_000 -> '2 MB', 1_534_000 -> '1.5 MB'."""
    return human_bytes(n).replace(".0 ", " ")


def _about(tokens: int) -> str:
    """7,336 -> '7,300': the budget is an estimate; say it roughly."""
    return f"{tokens // 100 * 100:,}" if tokens >= 1000 else f"{tokens:,}"


def _names(files: list[FileText]) -> str:
    names = [f.name for f in files]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

