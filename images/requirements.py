"""Prints what an image installs besides kftune itself, read from pyproject.toml, one per line.

    python requirements.py pyproject.toml --extra train [--without kfp,kubernetes]
    python requirements.py pyproject.toml --only-extra demo

The images install these first and kftune's wheel with `--no-deps` after them, so that the
dependency layer stays cached while only the source changes. Python 3.11+ (tomllib).
"""

import argparse
import re

import tomllib


def main() -> None:
    """Prints the requirement lines the flags select."""
    parser = argparse.ArgumentParser()
    parser.add_argument("pyproject")
    parser.add_argument("--extra", action="append", default=[], help="add this extra's lines")
    parser.add_argument("--only-extra", default="", help="print only this extra's lines")
    parser.add_argument("--without", default="", help="comma-separated project names to drop")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    extras = project.get("optional-dependencies", {})
    if args.only_extra:
        lines = list(extras[args.only_extra])
    else:
        lines = list(project.get("dependencies", []))
        for extra in args.extra:
            lines += extras[extra]
    dropped = {name.strip().lower() for name in args.without.split(",") if name.strip()}
    for line in lines:
        name = re.split(r"[<>=!~ \[;]", line, maxsplit=1)[0].lower()
        if name not in dropped:
            print(line)


if __name__ == "__main__":
    main()
