"""Markdown to Slack mrkdwn (bot/frontends/mrkdwn.py), and Slack text back to plain text."""

from __future__ import annotations

import time

import pytest

from bot.frontends.mrkdwn import RULE, ends_in_code, from_slack, to_mrkdwn

SAMPLE = """\
# Release **notes**

This is **bold**, *italic*, ***both*** and ~~gone~~ text.
See [the docs](https://example.com/docs?a=1&b=2) and ![logo](https://example.com/logo.png).

- first
  - nested *item*
* second
1. one
2. two

> a quote with **bold**

Use `**not bold**` or `<tag>` inline.

```python
def f(**kwargs):
    # comment
    return a < b && c
```

| Name | Type | Notes |
|------|:----:|------:|
| `x` | **int** | a & b |
| long_name | str | - |

---
Tom & Jerry"""

# Written by hand. Slack: *bold*, _italic_, ~strike~, <url|text>, no headings (bold instead), no tables
# (a code block), no language tag after ```, and &, <, > escaped everywhere, inside code too.
# Table: Type is centred (:----:), Notes right-aligned (------:); padding counts `&` as one character.
EXPECTED = """\
*Release notes*

This is *bold*, _italic_, *_both_* and ~gone~ text.
See <https://example.com/docs?a=1&amp;b=2|the docs> and <https://example.com/logo.png|logo>.

• first
  • nested _item_
• second
1. one
2. two

> a quote with *bold*

Use `**not bold**` or `&lt;tag&gt;` inline.

```
def f(**kwargs):
    # comment
    return a &lt; b &amp;&amp; c
```

```
Name       Type  Notes
---------  ----  -----
x          int   a &amp; b
long_name  str       -
```

──────────
Tom &amp; Jerry"""


def test_sample_converts_to_exact_mrkdwn():
    assert to_mrkdwn(SAMPLE) == EXPECTED
    assert not ends_in_code(SAMPLE)


def test_plain_prose_is_unchanged():
    prose = ("Hello there! It's 3 p.m., so we can talk.\n\n"
             "Numbers: 1, 2, 3 (and 4).\n  Indented line keeps its spaces.  \nLast line: done?")
    assert to_mrkdwn(prose) == prose


def test_only_entities_are_escaped_in_prose():
    assert to_mrkdwn("if a < b and b > c & d") == "if a &lt; b and b &gt; c &amp; d"


@pytest.mark.parametrize("text", [
    "2 * 3 * 4 = 24",
    "rename snake_case_name and other_snake_case",
    "the __init__ method and __main__.py",
    "a*b*c",
    "price ~ 5 and ~ 6",
])
def test_non_emphasis_is_left_alone(text):
    assert to_mrkdwn(text) == text


@pytest.mark.parametrize(("markdown", "expected"), [
    ("__bold words__", "*bold words*"),
    ("_italic_, and *also*", "_italic_, and _also_"),
    ("**bold with *italic* inside**", "*bold with _italic_ inside*"),
    ("**`code`** then **[link](https://x.org)**", "*`code`* then *<https://x.org|link>*"),
    ("snake_case_name in _italic text_", "snake_case_name in _italic text_"),
])
def test_emphasis(markdown, expected):
    assert to_mrkdwn(markdown) == expected


@pytest.mark.parametrize(("markdown", "expected"), [
    ("[a | b > c](https://x.org/a_b)", "<https://x.org/a_b|a ¦ b &gt; c>"),
    ("<https://x.org/?q=1&r=2>", "<https://x.org/?q=1&amp;r=2>"),
    ("see https://x.org/a_b_c", "see https://x.org/a_b_c"),
    ("[https://x.org](https://x.org)", "<https://x.org>"),
    ("[Foo](https://en.wikipedia.org/wiki/Foo_(bar))", "<https://en.wikipedia.org/wiki/Foo_(bar)|Foo>"),
    (r"\*not italic\* and \<b\>", "*not italic* and &lt;b&gt;"),
    ("``a `tick` b``", "``a `tick` b``"),
    ("`` <x> ``", "`&lt;x&gt;`"),
])
def test_links_and_code_spans(markdown, expected):
    assert to_mrkdwn(markdown) == expected


def test_headings_bullets_rules_quotes():
    markdown = "### **Step** 2 ###\n#hashtag\n+ plus\n    * deep\n***\n> > nested & quoted\n>quote"
    expected = "*Step 2*\n#hashtag\n• plus\n    • deep\n" + RULE + "\n> > nested &amp; quoted\n>quote"
    assert to_mrkdwn(markdown) == expected


def test_fence_with_tildes_and_indentation_inside_a_list():
    markdown = "1. Run:\n   ~~~bash\n   ls -l | grep x > out\n     indented\n   ~~~\n2. Done"
    assert to_mrkdwn(markdown) == "1. Run:\n```\nls -l | grep x &gt; out\n  indented\n```\n2. Done"


def test_unclosed_fence_is_closed_while_streaming():
    assert to_mrkdwn("Here:\n```python\nx = 1 << 2") == "Here:\n```\nx = 1 &lt;&lt; 2\n```"
    assert to_mrkdwn("Here:\n```python\nx = 1\n") == "Here:\n```\nx = 1\n```"
    assert ends_in_code("Here:\n```python\nx = 1")
    # nothing to show yet: an empty block would show as backticks
    assert to_mrkdwn("Here:\n```python") == to_mrkdwn("Here:\n```python\n") == "Here:"
    assert ends_in_code("Here:\n```python")
    # a longer fence is not closed by a shorter one, nor a backtick fence by tildes
    assert ends_in_code("````\n```\n~~~")
    assert not ends_in_code("````\n```\n````")


def test_message_split_inside_a_code_block_chains():
    text = "Try this:\n```python\ndef f(**kwargs):\n    # comment\n    return a < b && c\n```\nDone **now**."
    cut = text.index("    # comment")  # a line boundary inside the block
    part1, part2 = text[:cut], text[cut:]
    assert ends_in_code(part1)
    assert to_mrkdwn(part1) == "Try this:\n```\ndef f(**kwargs):\n```"
    assert not ends_in_code(part2, opens_in_code=True)
    rendered = to_mrkdwn(part2, opens_in_code=True)
    assert rendered.startswith("```\n")
    assert rendered == "```\n    # comment\n    return a &lt; b &amp;&amp; c\n```\nDone *now*."
    # without the flag the closing fence would open a block, and the prose after it would show as code
    assert to_mrkdwn(part2).endswith("```\nDone **now**.\n```")


def test_message_split_anywhere_inside_a_code_block_keeps_the_code():
    body = "def f(**kwargs):\n    # comment\n    return a < b && c\n"
    text = f"Try this:\n```python\n{body}```\nDone **now**."
    start = text.index(body)
    for cut in range(start + 1, start + len(body)):  # mid-line cuts too (a split point may be a space)
        part1, part2 = text[:cut], text[cut:]
        assert ends_in_code(part1), cut
        shown1, shown2 = to_mrkdwn(part1), to_mrkdwn(part2, opens_in_code=True)
        assert shown1.startswith("Try this:\n```\n") and shown1.endswith("```"), cut
        assert shown2.startswith("```\n") and shown2.endswith("\n```\nDone *now*."), cut
        code = shown1[len("Try this:\n```\n"):-3] + shown2[4:-len("```\nDone *now*.")]
        assert code.replace("\n", "") == "def f(**kwargs):    # comment    return a &lt; b &amp;&amp; c", cut


def test_continuation_that_stays_in_code():
    rendered = to_mrkdwn("more = 1\n# still code", opens_in_code=True)
    assert rendered == "```\nmore = 1\n# still code\n```"
    assert ends_in_code("more = 1", opens_in_code=True)


def test_table_without_data_rows_yet():
    assert to_mrkdwn("Results:\n| Model | Speed |\n|---|---|") == "Results:\n```\nModel  Speed\n-----  -----\n```"


def test_table_rows_without_outer_pipes_and_ragged():
    markdown = "a | b\n--|--\n1 | `x\\|y`\nonly one\n\nafter"
    assert to_mrkdwn(markdown) == "```\na  b\n-  ---\n1  x|y\n```\nonly one\n\nafter"


def test_pipes_without_separator_are_not_a_table():
    assert to_mrkdwn("a | b\nc | d") == "a | b\nc | d"


def test_long_reply_is_fast():
    line = "Some **bold** and *it* with `code` [l](https://x.org) _a_ * b ** c __ d ~~ e ` f [ g < h & i\n"
    text = (line * 60)[:3500] + "```\n" + "x = [1, 2] * 3\n" * 40
    start = time.perf_counter()
    for _ in range(20):
        to_mrkdwn(text)
    assert (time.perf_counter() - start) / 20 < 0.02


def test_unmatched_markers_stay_linear():
    # each line is a reply-sized run of openers without closers, which a naive lazy regex rescans to the end
    lines = ["**a " * 875, "~~a " * 875, "__a " * 875, "_a " * 1166, "*a " * 1166, "`a " * 1166, "[a](" * 875,
             "a | " * 875, "|---" * 875, "> " * 1750, " " * 3500 + "<@UBOT>"]
    start = time.perf_counter()
    for line in lines:
        to_mrkdwn(line)
        from_slack(line, drop_user="UBOT")
    assert time.perf_counter() - start < 0.05


# --- from_slack ---

@pytest.mark.parametrize(("text", "expected"), [
    ("<@UBOT> what is 2 + 2?", "what is 2 + 2?"),
    ("<@UBOT>: summarise this", "summarise this"),
    ("hey <@UBOT> can you help", "hey can you help"),
    ("thanks <@UBOT>, that works", "thanks, that works"),
    ("ask <@U123> and <@UBOT>", "ask @U123 and"),
    ("cc <@U123|alice>", "cc @alice"),
    ("see <#C123|general> and <#C456>", "see #general and #C456"),
    ("<!here> <!channel> <!everyone>", "@here @channel @everyone"),
    ("ping <!subteam^S123|@team>", "ping @team"),
    ("read <https://x.org/a?b=1&amp;c=2|the docs>", "read the docs (https://x.org/a?b=1&c=2)"),
    ("<https://x.org|https://x.org> and <http://example.com|example.com>", "https://x.org and http://example.com"),
    ("mail <mailto:a@b.org|a@b.org>", "mail a@b.org"),
    ("<https://x.org>", "https://x.org"),
    ("a &lt; b &amp;&amp; c &gt; d", "a < b && c > d"),
    ("typed &amp;lt; literally", "typed &lt; literally"),
    ("  line one\n<@UBOT> line two  ", "line one\nline two"),
])
def test_from_slack(text, expected):
    assert from_slack(text, drop_user="UBOT") == expected


def test_from_slack_keeps_mentions_without_drop_user():
    assert from_slack("<@UBOT> hi") == "@UBOT hi"
