"""Markdown to Slack mrkdwn, and Slack message text back to plain text.

Language models write Markdown, but Slack renders its own "mrkdwn": `*bold*` instead of `**bold**`, `_italic_`,
`~strike~`, `<url|text>` links, no headings, no tables, no language tags on code fences, and `&`, `<`, `>` must
be escaped everywhere. Messages arrive the other way round with `<@U123>` mentions, `<url|label>` links and
escaped entities, which a model should read as plain text. Replies are converted on every streamed edit, so
the conversion works line by line with precompiled regexes, and copes with text cut off mid-construct.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

RULE = "─" * 10  # Slack has no horizontal rule

# Sentinels: \x00 wraps the index of a protected piece (code span, link), \x02/\x03 stand for the bold and
# italic markers until all emphasis rules ran, so that one rule's output is never re-read by another.
_SENTINELS = re.compile("[\x00-\x03]")
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")
_BOLD, _ITALIC = "\x02", "\x03"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}(?=[^`]*$)|~{3,})")
_FENCE_CLOSE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*$")
_HR = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(?P<title>.*?))?(?:[ \t]+#+)?[ \t]*$")
_QUOTE = re.compile(r"^(?P<marker>(?:[ \t]{0,3}>)+)(?P<rest>.*)$")  # `> > nested` too, all at once
_BULLET = re.compile(r"^(?P<indent>[ \t]*)[-*+][ \t]+(?P<rest>.*)$")

# One left-to-right pass finds what emphasis rules must not touch; the earliest match wins, as in CommonMark
# (a backtick before a bracket makes a code span, a bracket before a backtick makes a link around the code).
_PROTECTED = re.compile(
    r"(?<!`)(?P<ticks>`+)(?!`)(?P<code>.+?)(?<!`)(?P=ticks)(?!`)"
    r"|\\(?P<escaped>[!-/:-@\[-`{-~])"
    r"|<(?P<autolink>[A-Za-z][A-Za-z0-9+.\-]{1,31}:[^\s<>]*)>"
    r"|<(?P<email>[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+)>"
    r"|!?\[(?P<label>(?:[^\[\]]|\[[^\[\]]*\])*)\]"
    r"\([ \t]*(?P<url>(?:[^()\s]|\([^()\s]*\))+)(?:[ \t]+(?:\"[^\"]*\"|'[^']*'))?[ \t]*\)"
)
_MARKUP_CHARS = re.compile(r"[`\\<>&\[*_~]")


class _Emphasis(NamedTuple):
    pattern: re.Pattern[str]
    last_closer: re.Pattern[str]  # no match ends past the last closer: not scanning there keeps this linear
    marker: str  # replaces the opening delimiter (reversed, the closing one)
    skip_identifiers: bool  # `__init__` in prose is far more often a Python name than a bold word

    def wrap(self, m: re.Match[str]) -> str:
        if self.skip_identifiers and _IDENTIFIER.fullmatch(m["text"]):
            return m[0]
        return self.marker + m["text"] + self.marker[::-1]


def _emphasis_rule(opener: str, closer: str, marker: str, text: str = ".+?",
                   skip_identifiers: bool = False) -> _Emphasis:
    pattern = re.compile(f"{opener}(?P<text>{text}){closer}")
    return _Emphasis(pattern, re.compile(f".*{closer}"), marker, skip_identifiers)


_IDENTIFIER = re.compile(r"\w+")
# Markers must hug non-space text; `_` (as in CommonMark) never opens or closes inside a word, and neither does
# `*` here, since Slack would not render it (`2*3*4` stays as it is). In this order: `***`, then `**`, then `*`.
_EMPHASIS = [
    _emphasis_rule(r"(?<![*\w])\*\*\*(?=[^\s*])", r"(?<=[^\s*])\*\*\*(?![*\w])", _BOLD + _ITALIC),
    _emphasis_rule(r"(?<!\w)___(?=[^\s_])", r"(?<=[^\s_])___(?!\w)", _BOLD + _ITALIC),
    _emphasis_rule(r"(?<!\*)\*\*(?=[^\s*])", r"(?<=[^\s*])\*\*(?!\*)", _BOLD),
    _emphasis_rule(r"(?<!\w)__(?=[^\s_])", r"(?<=[^\s_])__(?!\w)", _BOLD, skip_identifiers=True),
    _emphasis_rule(r"(?<![~\w])~~(?=[^\s~])", r"(?<=[^\s~])~~(?![~\w])", "~"),
    _emphasis_rule(r"(?<![*\w])\*(?=[^\s*])", r"(?<=\S)\*(?![*\w])", _ITALIC, text="[^*]+?"),
    _emphasis_rule(r"(?<!\w)_(?=[^\s_])", r"(?<=[^\s_])_(?!\w)", _ITALIC),
]

_NOISE = re.compile(r"\*\*|`")  # dropped from link labels and table cells, where Slack shows them as they are
_CELL_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_TABLE_SEPARATOR = re.compile(r"^[ \t]*\|?(?:[ \t]*:?-+:?[ \t]*\|)*[ \t]*:?-+:?[ \t]*\|?[ \t]*$")


class _Fence(NamedTuple):
    char: str  # "`" or "~"; "" for a block continued from a previous message (its fence is unknown)
    length: int
    indent: int  # spaces stripped from body lines, as CommonMark does for an indented fence


_CONTINUED = _Fence("", 3, 0)


def to_mrkdwn(markdown: str, opens_in_code: bool = False) -> str:
    """Slack mrkdwn for `markdown`; `opens_in_code`: it continues a message that ended inside a code block."""
    lines = _SENTINELS.sub("", markdown).split("\n")
    out: list[str] = []
    fence: _Fence | None = None
    opened_at = i = 0  # where in `out` the open code block starts
    if opens_in_code:
        if _closes(lines[0], _CONTINUED):
            i = 1  # the block closes at once: an empty code block would show as literal backticks
        else:
            out.append("```")
            fence = _CONTINUED
    while i < len(lines):
        line = lines[i]
        if fence is not None:
            if _closes(line, fence):
                out.append("```")
                fence = None
            else:
                out.append(_escape(_dedent(line, fence.indent)))
            i += 1
            continue
        fence = _opens(line)
        if fence is not None:
            opened_at = len(out)
            out.append("```")  # a language tag would show as the code's first word
            i += 1
            continue
        end = _table_end(lines, i)
        if end:
            out.extend(_table(lines[i:end]))
            i = end
            continue
        out.append(_line(line))
        i += 1
    if fence is None:
        return "\n".join(out)
    # Still streaming, or cut in two: show what there is as code, and nothing while there is none yet
    # (```` ```\n``` ```` would show as backticks). A last, empty line becomes the closing fence.
    if not any(out[opened_at + 1:]):
        return "\n".join(out[:opened_at])
    return "\n".join(out[:-1] if out[-1] == "" else out) + "\n```"


def ends_in_code(markdown: str, opens_in_code: bool = False) -> bool:
    """Whether `markdown` ends inside a fenced code block (so the next part must reopen it)."""
    fence = _CONTINUED if opens_in_code else None
    for line in _SENTINELS.sub("", markdown).split("\n"):
        if fence is None:
            fence = _opens(line)
        elif _closes(line, fence):
            fence = None
    return fence is not None


def from_slack(text: str, drop_user: str | None = None) -> str:
    """Plain text of a Slack message; mentions of `drop_user` (the bot itself) are removed."""
    if drop_user:
        text = _MENTION_WITH_SPACE.sub(lambda m: _drop_mention(m, drop_user), text)
    text = _SLACK_ENTITY.sub(_slack_entity, text)
    # &amp; last, so that an escaped entity (`&amp;lt;`) comes out as the text the user typed (`&lt;`)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()


# --- Markdown to mrkdwn: blocks ---

def _opens(line: str) -> _Fence | None:
    # Any indentation is accepted (not only CommonMark's 3 spaces): models indent fences inside list items.
    m = _FENCE_OPEN.match(line)
    if m is None:
        return None
    return _Fence(m["fence"][0], len(m["fence"]), len(m["indent"].expandtabs(4)))


def _closes(line: str, fence: _Fence) -> bool:
    m = _FENCE_CLOSE.match(line)
    if m is None:
        return False
    return (not fence.char or m["fence"][0] == fence.char) and len(m["fence"]) >= fence.length


def _dedent(line: str, indent: int) -> str:
    if not indent:
        return line
    stripped = line.lstrip(" ")
    return line[min(indent, len(line) - len(stripped)):]


def _line(line: str) -> str:
    """One line outside code blocks and tables."""
    if _HR.match(line):
        return RULE
    m = _HEADING.match(line)
    if m:
        title = (m["title"] or "").strip()
        return f"*{_inline(title, bold=False)}*" if title else ""  # bold inside bold would not nest
    m = _QUOTE.match(line)
    if m:
        return m["marker"] + _line(m["rest"])  # markers are markup, not `>` to escape
    m = _BULLET.match(line)
    if m:
        return f"{m['indent']}• {_inline(m['rest'])}"
    return _inline(line)


def _table_end(lines: list[str], start: int) -> int:
    """The index past a table starting at `start` (a header row, then a separator row), or 0."""
    if start + 1 >= len(lines) or "|" not in lines[start]:
        return 0
    separator = lines[start + 1]
    if "|" not in separator or not _TABLE_SEPARATOR.match(separator):
        return 0
    if len(_cells(separator)) != len(_cells(lines[start])):
        return 0
    end = start + 2
    while end < len(lines) and "|" in lines[end] and lines[end].strip() and _opens(lines[end]) is None:
        end += 1
    return end


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(row)]


def _table(rows: list[str]) -> list[str]:
    """A table as a code block with padded columns: Slack cannot render tables."""
    header, separator, body = _cells(rows[0]), _cells(rows[1]), [_cells(row) for row in rows[2:]]
    columns = len(header)
    grid = [[_cell_text(cell) for cell in (row + [""] * columns)[:columns]] for row in [header, *body]]
    widths = [max(1, *(len(row[c]) for row in grid)) for c in range(columns)]
    aligns = [_alignment(spec) for spec in separator]
    lines = [_table_row(grid[0], widths, aligns), "  ".join("-" * width for width in widths)]
    lines += [_table_row(row, widths, aligns) for row in grid[1:]]
    return ["```", *lines, "```"]


def _cell_text(cell: str) -> str:
    return _NOISE.sub("", _CELL_BREAK.sub(" ", cell)).strip()


def _alignment(spec: str) -> str:
    if spec.endswith(":"):
        return "center" if spec.startswith(":") else "right"
    return "left"


def _table_row(cells: list[str], widths: list[int], aligns: list[str]) -> str:
    # Padding before escaping: Slack shows `&amp;` as one character.
    padded = [_pad(cell, width, align) for cell, width, align in zip(cells, widths, aligns)]
    return _escape("  ".join(padded).rstrip())


def _pad(text: str, width: int, align: str) -> str:
    space = width - len(text)
    if align == "right":
        return " " * space + text
    if align == "center":
        return " " * (space // 2) + text + " " * (space - space // 2)
    return text + " " * space


# --- Markdown to mrkdwn: inline ---

def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _inline(text: str, bold: bool = True) -> str:
    """Emphasis, links and code spans of one line; `bold=False` drops bold markers (inside a heading)."""
    if not _MARKUP_CHARS.search(text):
        return text
    kept: list[str] = []

    def keep(m: re.Match[str]) -> str:
        kept.append(_protected(m))
        return f"\x00{len(kept) - 1}\x00"

    text = _emphasis(_escape(_PROTECTED.sub(keep, text)))
    text = text.replace(_BOLD, "*" if bold else "").replace(_ITALIC, "_")
    return _PLACEHOLDER.sub(lambda m: kept[int(m[1])], text)


def _protected(m: re.Match[str]) -> str:
    """The mrkdwn for a code span, an escaped character, an autolink, or a link or image (both become links)."""
    if m["ticks"]:
        return _code_span(m["ticks"], m["code"])
    if m["escaped"]:
        return _escape(m["escaped"])
    if m["autolink"]:
        return f"<{_link_url(m['autolink'])}>"
    if m["email"]:
        return f"<mailto:{_escape(m['email'])}|{_escape(m['email'])}>"
    url = _link_url(m["url"])
    # A `|` would end the URL part early; `>` is harmless once escaped.
    label = _escape(_NOISE.sub("", m["label"]).strip()).replace("|", "¦")
    return f"<{url}|{label}>" if label and label != url else f"<{url}>"


def _code_span(ticks: str, code: str) -> str:
    # Slack knows only single-backtick spans; ``a`b`` (a backtick inside) cannot be written any other way.
    if "`" in code:
        return ticks + _escape(code) + ticks
    if len(code) > 2 and code.startswith(" ") and code.endswith(" ") and code.strip():
        code = code[1:-1]  # CommonMark's padding, there to separate the code from the backticks
    return f"`{_escape(code)}`"


def _link_url(url: str) -> str:
    return _escape(url).replace("|", "%7C")


def _emphasis(text: str) -> str:
    for rule in _EMPHASIS:
        last = rule.last_closer.match(text)
        if last:
            text = rule.pattern.sub(rule.wrap, text[:last.end()]) + text[last.end():]
    return text


# --- Slack to plain text ---

_SLACK_ENTITY = re.compile(r"<([^<>\n]+)>")
_MENTION_WITH_SPACE = re.compile(
    r"(?<![ \t])(?P<before>[ \t]*)<@(?P<user>[^<>|\n]+)(?:\|[^<>\n]*)?>(?P<punct>[,:;]?)(?P<after>[ \t]*)")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _drop_mention(m: re.Match[str], drop_user: str) -> str:
    """Removes a mention of the bot, with the spaces around it (and `:`/`,` after it: "@bot: hi")."""
    if m["user"] != drop_user:
        return m[0]
    text = m.string
    line_start = m.start() == 0 or text[m.start() - 1] == "\n"
    line_end = m.end() == len(text) or text[m.end()] == "\n"
    if line_start or line_end:
        return ""
    return (m["punct"] + " ") if m["punct"] or m["before"] or m["after"] else ""


def _slack_entity(m: re.Match[str]) -> str:
    target, _, label = m[1].partition("|")
    handler = _ENTITY_HANDLERS.get(target[:1])
    return handler(target[1:], label) if handler else _slack_link(target, label)


def _special(target: str, label: str) -> str:
    # <!here>, <!channel>, <!subteam^S123|@team>, <!date^...|fallback text>
    if label:
        return label
    name, _, ident = target.partition("^")
    return f"@{ident}" if name == "subteam" and ident else f"@{name}"


def _slack_link(url: str, label: str) -> str:
    if url.startswith("mailto:"):
        return label or url[len("mailto:"):]
    if not label or not url or _same_link(label, url):
        return url or label
    return f"{label} ({url})"


def _same_link(label: str, url: str) -> bool:
    # Slack links a typed "example.com" as <http://example.com|example.com>
    return label == url or _SCHEME.sub("", url).rstrip("/") == label.rstrip("/")


_ENTITY_HANDLERS: dict[str, Callable[[str, str], str]] = {
    "@": lambda user, name: f"@{name or user}",
    "#": lambda channel, name: f"#{name or channel}",
    "!": _special,
}
