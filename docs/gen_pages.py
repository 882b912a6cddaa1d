"""Pages made at build time by mkdocs-gen-files: the command-line reference appended to cli.md from attnkit's
argparse parsers (so it cannot fall behind the options), and changelog.md from the repository's CHANGELOG.md."""

import argparse
from pathlib import Path

import mkdocs_gen_files

from attnkit.cli import _parser

WIDTH = 110


def _help(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class
    parser.formatter_class = lambda prog: formatter(prog, width=WIDTH)
    return parser.format_help()


parser = _parser()
parser.prog = "attnkit"
commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
with mkdocs_gen_files.open("cli.md", "a") as page:
    page.write("\n## Reference\n\nEvery command's `--help`, generated from its parser.\n\n")
    page.write(f"### attnkit\n\n```text\n{_help(parser)}```\n\n")
    for name, command in commands.choices.items():
        page.write(f"### attnkit {name}\n\n```text\n{_help(command)}```\n\n")

with mkdocs_gen_files.open("changelog.md", "w") as page:
    page.write((Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text())
