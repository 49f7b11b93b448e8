"""Files as context (bot/attachments.py): the checks and the reading on their own, then end to
end over the wire: the real discord.py and slack-bolt against the emulators, answering with
SmolLM2 (greedy) on the CPU. A text file joins the user's turn and changes the answer; a file
too large, an image, one over the model's token budget, or one Slack will not hand over
without files:read is refused with a message, and the bot answers the next question."""

from __future__ import annotations

import asyncio

import pytest
from discord_emulator import DiscordEmulator, no_swallowed_discord_errors, restore_discord_urls  # noqa: F401
from frontend_helpers import expected_replies, running_bot
from slack_emulator import no_swallowed_slack_errors  # noqa: F401
from test_discord import answer_to, bot_config, text_of as discord_text, _answers
from test_slack import answer_in, socket_bot, text_of as slack_text

from bot.app import build_app
from bot.attachments import (
    MAX_FILE_BYTES, MAX_FILES, AttachedFile, FileRefused, FileText, check_file_tokens, read_text_files, with_files,
)
from bot.config import load_settings

# after the label's newline, so that its tokens are the same in the turn as on their own
NOTES = ("The lighthouse keeper's cat is called Biscuit.\n"
         "Biscuit sleeps on the stairs of the lamp room every afternoon.\n")
QUESTION = "What is the cat called?"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00" + bytes(40)
BIG = b"lorem ipsum " * 175_000  # 2.1 MB of text: over the size limit, whatever its type
LONG = "The keeper counts the waves. " * 1_600  # 46 KB, about 9,600 tokens: over SmolLM2's 8,192


# -- the checks on their own -------------------------------------------------------------------
class Download:
    """A platform's download of one attachment: the bytes (or an error), and whether it was asked."""

    def __init__(self, data: bytes = b"", error: Exception | None = None):
        self.data, self.error, self.calls = data, error, 0

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.data


def attached(name: str, data: bytes = b"", content_type: str | None = None, size: int | None = None,
             error: Exception | None = None) -> tuple[AttachedFile, Download]:
    download = Download(data, error)
    return AttachedFile(name, len(data) if size is None else size, content_type, download), download


def refusal(files: list[AttachedFile]) -> str:
    with pytest.raises(FileRefused) as refused:
        asyncio.run(read_text_files(files))
    return str(refused.value)


def test_text_files_are_read_whatever_their_encoding_and_labelled_in_the_turn():
    md, _ = attached("notes.md", b"\xef\xbb\xbf# Notes\r\nline two\r\n", "text/markdown")  # UTF-8 with a BOM, CRLF
    utf16, _ = attached("data.csv", "a,b\n1,ü\n".encode("utf-16"), "text/csv")  # with its BOM
    bare, _ = attached("LICENSE", b"MIT License\n")  # a text name without a suffix
    typed, _ = attached("dump", b'{"a": 1}\n', "application/json")  # no suffix, a text type
    files = asyncio.run(read_text_files([md, utf16, bare, typed]))
    assert files == [FileText("notes.md", "# Notes\nline two\n"), FileText("data.csv", "a,b\n1,ü\n"),
                     FileText("LICENSE", "MIT License\n"), FileText("dump", '{"a": 1}\n')]
    assert with_files("What is it?", files[:1]) == "File notes.md:\n```\n# Notes\nline two\n```\n\nWhat is it?"
    assert with_files("  ", files[2:3]) == "File LICENSE:\n```\nMIT License\n```"  # a file with no question
    assert with_files("hi", []) == "hi"
    fenced = with_files("", [FileText("README.md", "Run:\n```sh\nmake\n```\n")])
    assert fenced == "File README.md:\n````\nRun:\n```sh\nmake\n```\n````"  # its own fences do not end it


def test_images_binaries_and_large_files_are_refused_before_they_are_downloaded():
    png, png_download = attached("photo.png", b"\x89PNG", "image/png")
    assert refusal([png]) == "I can read text files only (txt, md, csv, json, code); photo.png looks like an image."
    pdf, _ = attached("report.pdf", b"%PDF")  # the platform said nothing: the name does
    assert "report.pdf looks like a PDF" in refusal([pdf])
    unknown, _ = attached("blob", b"\x00", "application/octet-stream")
    assert refusal([unknown]) == ("I can read text files only (txt, md, csv, json, code); "
                                  "blob looks like a binary file.")
    big, big_download = attached("big.txt", size=2_000_000)
    assert refusal([big]) == "big.txt is 2 MB; I read files of up to 500 KB. Send a shorter part of it."
    many = [attached(f"{n}.txt", b"x")[0] for n in range(MAX_FILES + 1)]
    assert refusal(many) == (f"I read at most {MAX_FILES} files in one message, and this one has {MAX_FILES + 1}. "
                             "Send them over several messages.")
    fine, fine_download = attached("fine.txt", b"fine")
    assert "photo.png" in refusal([fine, png])  # all are checked before any is downloaded
    assert (png_download.calls, big_download.calls, fine_download.calls) == (0, 0, 0)


def test_content_that_is_not_text_or_cannot_be_downloaded_is_refused_naming_the_file():
    disguised, _ = attached("notes.txt", b"PK\x03\x04\x00\x00binary", "text/plain")
    assert refusal([disguised]) == "notes.txt is not a text file (it holds binary data), so I did not read it."
    latin1, _ = attached("old.txt", "café".encode("latin-1"))
    assert refusal([latin1]) == ("I could not read old.txt as text: it is not UTF-8. "
                                 "Save it as UTF-8 and attach it again.")
    empty, _ = attached("empty.md", b"\n\n")
    assert refusal([empty]) == "empty.md is empty: there is nothing in it to read."
    lying, _ = attached("small.txt", b"x" * (MAX_FILE_BYTES + 1), size=10)  # the platform's size was wrong
    assert refusal([lying]).startswith("small.txt is 500 KB; I read files of up to 500 KB.")
    gone, _ = attached("notes.md", error=ConnectionResetError("connection reset by peer"))
    assert refusal([gone]) == ("I could not download notes.md (ConnectionResetError: connection reset by peer). "
                               "Try attaching it again.")
    said, _ = attached("notes.md", error=FileRefused("the scope is missing"))  # the frontend's own words stand
    assert refusal([said]) == "the scope is missing"


def test_files_over_the_token_budget_are_refused_naming_them_their_tokens_and_the_model():
    def words(text: str) -> int:
        return len(text.split())

    notes, data = FileText("notes.md", "word " * 100), FileText("data.csv", "x " * 40)
    check_file_tokens([notes, data], words, 200, "smollm2")  # within the budget: nothing to say
    with pytest.raises(FileRefused) as refused:
        check_file_tokens([FileText("notes.md", "word " * 41_200)], words, 7_336, "smollm2")
    # the count is of the file as it joins the turn: its label and fences too
    assert str(refused.value) == ("notes.md is 41,204 tokens; smollm2 can read about 7,300 tokens of files in one "
                                  "message: send a shorter part.")
    with pytest.raises(FileRefused) as refused:
        check_file_tokens([notes, data], words, 120, "smollm2")
    assert str(refused.value) == ("notes.md and data.csv are 148 tokens together (notes.md 104, data.csv 44); "
                                  "smollm2 can read about 120 tokens of files in one message: send fewer or "
                                  "shorter files.")


# -- end to end ----------------------------------------------------------------------------------
async def greedy_answers_and_prompt(config, turns: list[str]) -> tuple[list[str], list[int], list[int]]:
    """SmolLM2's greedy answers to each user turn alone, the prompt ids of the first turn, and
    the ids of NOTES on their own."""
    answers = await expected_replies(config, [[{"role": "user", "content": turn}] for turn in turns])
    app = build_app(load_settings(config))
    try:
        spec = app.catalog.spec("smollm2")
        prompt = await asyncio.to_thread(app.catalog.prompt, spec, [{"role": "user", "content": turns[0]}])
        notes_ids = app.catalog.tokenizer(spec).tokenizer.encode(NOTES.rstrip(), add_special_tokens=False)
        return answers, list(prompt.input_ids), notes_ids
    finally:
        await app.close()


def contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


async def discord_said(emu, pushed: dict, words: str, timeout: float = 30.0) -> list:
    """The bot's messages answering `pushed`, once the last one says `words`."""
    def done():
        parts = [m for m in emu.bot_messages() if _answers(emu, m, pushed["id"])]
        return parts if parts and words in (parts[-1].content or "") else None

    return await emu.wait_for(done, timeout=timeout)


@pytest.mark.usefixtures("restore_discord_urls", "no_swallowed_discord_errors")
def test_discord_a_text_file_joins_the_question_images_and_oversized_files_are_refused(tmp_path):
    async def run():
        async with DiscordEmulator() as emu:
            config = bot_config(tmp_path, emu)
            async with running_bot(config, "discord"):
                await emu.wait_ready()
                alice = emu.user("alice")
                asked = await emu.push_message(alice, QUESTION, mentions_bot=True,
                                               attachments=[("notes.md", NOTES.encode())])
                with_file = await answer_to(emu, asked)
                alone = await emu.push_message(alice, "", mentions_bot=True, attachments=[("notes.md", NOTES.encode())])
                file_alone = await answer_to(emu, alone)
                big = await emu.push_message(alice, "Summarize this.", mentions_bot=True,
                                             attachments=[("big.txt", BIG)])
                png = await emu.push_message(alice, "What is in this picture?", mentions_bot=True,
                                             attachments=[("photo.png", PNG)])
                long = await emu.push_message(alice, "Summarize this.", mentions_bot=True,
                                              attachments=[("long.md", LONG.encode())])
                refused = [await discord_said(emu, big, "big.txt"), await discord_said(emu, png, "photo.png"),
                           await discord_said(emu, long, "long.md")]
                plain = await emu.push_message(alice, QUESTION, mentions_bot=True)
                after = await answer_to(emu, plain)
            turns = [with_files(QUESTION, [FileText("notes.md", NOTES)]), QUESTION,
                     with_files("", [FileText("notes.md", NOTES)])]
            expected = await greedy_answers_and_prompt(config, turns)
            return emu, asked, with_file, file_alone, big, refused, after, expected

    emu, asked, with_file, file_alone, big, refused, after, expected = asyncio.run(run())
    (with_notes, without, notes_alone), prompt_ids, notes_ids = expected
    assert contains(prompt_ids, notes_ids)  # the file's text is in the prompt the model reads
    assert discord_text(with_file) == with_notes and with_notes != without  # the file changed the answer
    assert discord_text(file_alone) == notes_alone  # a file with no question is answered too
    assert discord_text(after) == without  # the bot stayed up, and the file is not remembered
    (big_reply,), (png_reply,), (long_reply,) = refused  # one message each, no answer after it
    assert big_reply.content == "big.txt is 2.1 MB; I read files of up to 500 KB. Send a shorter part of it."
    assert png_reply.content == ("I can read text files only (txt, md, csv, json, code); "
                                 "photo.png looks like an image.")
    assert long_reply.content.startswith("long.md is ") and " tokens; smollm2 can read about " in \
        long_reply.content and long_reply.content.endswith(" tokens of files in one message: send a shorter part.")
    assert not any("tok/s" in v["content"] for r in (big_reply, png_reply, long_reply) for v in r.history)
    # the big file and the picture were never downloaded from the CDN; the text files were
    downloaded = {a["filename"] for m in emu.messages.values() for a in m.attachments if a["id"] in emu.downloads}
    assert downloaded == {"notes.md", "long.md"}
    assert emu.messages[asked["id"]].attachments[0]["content_type"] == "text/markdown; charset=utf-8"


async def slack_said(emu, thread_ts: str, words: str, timeout: float = 30.0) -> list:
    """The bot's messages in the thread, once the last one says `words`."""
    def done():
        parts = emu.bot_messages(thread_ts=thread_ts)
        return parts if parts and words in parts[-1].text else None

    return await emu.wait_for(done, timeout=timeout)


@pytest.mark.usefixtures("no_swallowed_slack_errors")
def test_slack_a_shared_file_is_downloaded_with_the_token_and_without_files_read_the_scope_is_named(tmp_path):
    async def run():
        async with socket_bot(tmp_path) as (emu, config):
            bob = emu.user("bob")
            notes = emu.user_file(bob, "notes.md", NOTES.encode())
            _, asked = await emu.push_mention(bob, QUESTION, files=[notes])
            with_file = await answer_in(emu, asked["ts"])
            big = emu.user_file(bob, "big.txt", BIG)
            _, big_event = await emu.push_mention(bob, "Summarize this.", files=[big])
            png = emu.user_file(bob, "photo.png", PNG)
            _, png_event = await emu.push_mention(bob, "What is in this picture?", files=[png])
            refused = [await slack_said(emu, big_event["ts"], "big.txt"),
                       await slack_said(emu, png_event["ts"], "photo.png")]
            emu.scopes = tuple(scope for scope in emu.scopes if scope != "files:read")  # installed before it
            unreadable = emu.user_file(bob, "notes.md", NOTES.encode())
            _, dm = await emu.push_dm(bob, QUESTION, files=[unreadable])  # a `message` event, subtype file_share
            no_scope = await slack_said(emu, dm["ts"], "files:read")
            _, plain = await emu.push_mention(bob, QUESTION)
            after = await answer_in(emu, plain["ts"])
            expected = await expected_replies(config, [[{"role": "user", "content": turn}] for turn in
                                                       (with_files(QUESTION, [FileText("notes.md", NOTES)]),
                                                        QUESTION)])
            return emu, asked, dm, notes, unreadable, with_file, refused, no_scope, after, expected

    emu, asked, dm, notes, unreadable, with_file, refused, no_scope, after, expected = asyncio.run(run())
    with_notes, without = expected
    assert asked["files"][0]["url_private_download"] and dm["subtype"] == "file_share" and dm["files"]
    assert slack_text(with_file) == with_notes and with_notes != without  # streamed: the model's own Markdown
    assert slack_text(after) == without
    (big_reply,), (png_reply,) = refused
    assert big_reply.text == "big.txt is 2.1 MB; I read files of up to 500 KB. Send a shorter part of it."
    assert png_reply.text == "I can read text files only (txt, md, csv, json, code); photo.png looks like an image."
    (scope_reply,) = no_scope
    assert scope_reply.text.startswith("I could not download notes.md: Slack sent its sign-in page instead, "
                                       "which means my token lacks the files:read scope.")
    assert not any("tok/s" in text for r in (big_reply, png_reply, scope_reply) for text, _, _ in r.history)
    # downloaded with the token while it had files:read, the sign-in page after; the others never
    assert emu.downloads == [(notes["id"], True), (unreadable["id"], False)]


def test_a_slack_thread_reads_back_a_message_shared_with_a_file_as_the_users_turn(tmp_path):
    """A user's message with a file (subtype file_share) is part of the conversation: its text
    is history, like any message of theirs; channel events and other bots' messages are not."""
    from slack_emulator import SlackEmulator
    from test_slack import bot_config as slack_config

    from bot.frontends.slack import SlackFrontend
    from bot.frontends.slack_settings import parse_slack_settings

    async def run():
        async with SlackEmulator() as emu:
            config = slack_config(tmp_path, emu)
            app = build_app(load_settings(config))
            frontend = SlackFrontend(app.host, parse_slack_settings(app.settings.sections["slack"]))
            try:
                await frontend._identify()
                amy = emu.user("amy")
                root = emu.post_user_message(amy, "Can you read my notes?", mention=True)
                await frontend.client.chat_postMessage(channel=root.channel, thread_ts=root.ts, text="Send them.")
                notes = emu.user_file(amy, "notes.md", NOTES.encode())
                emu.post_user_message(amy, "Here they are.", thread_ts=root.ts, files=[notes])
                joined = emu.post_user_message(amy, "has joined the channel", thread_ts=root.ts)
                joined.subtype = "channel_join"
                last = emu.post_user_message(amy, QUESTION, thread_ts=root.ts)
                return await frontend._thread_history(root.channel, root.ts, last.ts)
            finally:
                await app.close()

    history = asyncio.run(run())
    assert history == [{"role": "user", "content": "Can you read my notes?"},
                       {"role": "assistant", "content": "Send them."},
                       {"role": "user", "content": "Here they are."}]
