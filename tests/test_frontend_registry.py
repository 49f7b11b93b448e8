"""A chat platform is one module: a third-party frontend arrives through the
`modelbot.frontends` entry-point group, its config section is accepted and checked by its own
parser, and `modelbot run NAME` starts it; it answers through the shared intake."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from helpers import cli, cli_env, smollm2, write_config

# A whole platform: questions from a file, answers to another, through the shared intake.
FILE_FRONTEND = '''
from dataclasses import dataclass
from pathlib import Path

from bot.config import ConfigError
from bot.frontends.console import ConsoleReply
from bot.frontends.intake import Intake, Question
from bot.frontends.registry import FrontendType


@dataclass(frozen=True)
class Settings:
    enabled: bool = False
    questions: str = ""
    answers: str = ""


def parse_settings(section):
    unknown = set(section) - {"enabled", "questions", "answers"}
    if unknown:
        raise ConfigError(f"filechat.{sorted(unknown)[0]}: unknown key")
    return Settings(**section)


def check_ready(settings):
    if not settings.questions:
        raise ConfigError("filechat.questions: empty; name the file to read questions from")


class FileReply(ConsoleReply):
    async def start(self):
        return True

    async def close(self, stopped=None):
        pass

    def abandon(self):
        pass


class FileChat:
    def __init__(self, host, settings):
        self.settings = settings
        self.intake = Intake(host, frontend="filechat", model_switch="everyone")

    async def run(self):
        with open(self.settings.answers, "w", encoding="utf-8") as out:
            reply = FileReply(out, out, show_footer=False)
            lines = Path(self.settings.questions).read_text(encoding="utf-8").splitlines()
            for number, line in enumerate(lines):
                await self.intake.answer(Question(key=number, channel="file", user="reader", text=line), reply)

    async def close(self):
        await self.intake.shutdown()


FRONTEND = FrontendType("filechat", parse_settings=parse_settings, check_ready=check_ready, create=FileChat)
'''


@pytest.fixture
def frontend_site(tmp_path: Path) -> Path:
    """What `pip install modelbot-filechat` would leave: the module and its entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "filechat_frontend.py").write_text(textwrap.dedent(FILE_FRONTEND))
    dist = site / "modelbot_filechat-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: modelbot-filechat\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[modelbot.frontends]\nfilechat = filechat_frontend\n")
    return site


def run_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = cli_env()
    env["PYTHONPATH"] = str(site) + ":" + env["PYTHONPATH"]
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env, timeout=300)


def test_a_new_platform_is_one_module_found_through_its_entry_point(frontend_site, tmp_path):
    questions, answers = tmp_path / "questions.txt", tmp_path / "answers.txt"
    questions.write_text("What is the capital of France?\n/models\n", encoding="utf-8")
    config = write_config(tmp_path, [smollm2()], filechat={"enabled": True, "questions": str(questions),
                                                            "answers": str(answers)})
    done = run_cli(frontend_site, "run", "--config", str(config))
    assert done.returncode == 0, done.stderr
    text = answers.read_text(encoding="utf-8")
    assert "Paris" in text  # the model answered the first line
    assert "smollm2" in text and "quantization" in text  # the shared commands answered the second


def test_a_new_platforms_section_is_checked_by_its_own_parser(frontend_site, tmp_path):
    config = write_config(tmp_path, [smollm2()], filechat={"enabled": True, "questoins": "typo.txt"})
    done = run_cli(frontend_site, "run", "filechat", "--config", str(config))
    assert done.returncode == 2 and "filechat.questoins: unknown key" in done.stderr
    unknown = run_cli(frontend_site, "run", "nochat", "--config", str(config))
    assert unknown.returncode == 1 and "there are: discord, slack, filechat" in unknown.stderr


def test_without_the_module_its_section_is_an_unknown_key(tmp_path):
    from bot.config import ConfigError, parse_settings

    with pytest.raises(ConfigError, match="filechat: unknown key"):
        parse_settings({"models": [smollm2()], "filechat": {"enabled": True}}, base_dir=tmp_path)
