"""The README's command lines use commands and options that exist (it drifted before: a
positional database given as --db, a --rerank that only one command has)."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gliomatch.cli import app

README = Path(__file__).resolve().parents[2] / "README.md"
GROUPS = {"db", "bench", "atlas"}


def _command_lines():
    text = README.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            line = re.sub(r"^\.venv/bin/", "", line)
            if line.startswith("gliomatch "):
                lines.append(line)
    return lines


def _help(words):
    r = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, (words, r.output)
    return r.output


@pytest.mark.parametrize("line", _command_lines())
def test_every_readme_command_and_option_exists(line):
    words = line.split()[1:]
    cmd = [words[0]]
    if words[0] in GROUPS and len(words) > 1 and not words[1].startswith("-"):
        # "bench solver | build | ...": every listed subcommand exists
        subs = [words[1]] + [
            w for a, w in zip(words, words[1:], strict=False) if a == "|" and w[0].isalpha()
        ]
        group_help = _help([words[0]])
        for sub in subs:
            assert sub in group_help, f"{line}: no `gliomatch {words[0]} {sub}`"
        cmd.append(words[1])
    text = _help(cmd)
    for opt in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
        assert opt in text, f"{line}: `gliomatch {' '.join(cmd)}` has no {opt}"
