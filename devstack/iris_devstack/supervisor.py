"""infra/local/supervisord.conf read as supervisord reads it: a program's settings, and the
command it runs with its %(ENV_X)s filled, so that tests and the benchmark start a program
exactly as `make up` does."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

from iris_devstack.processes import REPO_ROOT

SUPERVISORD_CONF = REPO_ROOT / "infra" / "local" / "supervisord.conf"


def program_section(program: str, conf: Path = SUPERVISORD_CONF) -> dict[str, str]:
    """The raw (unexpanded) settings of one supervisord program."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(conf)
    return dict(parser.items(f"program:{program}"))


def supervisord_command(program: str, **env: str) -> list[str]:
    """The command supervisord runs for `program`, with its %(ENV_X)s filled from `env`."""
    command = program_section(program)["command"]
    return shlex.split(re.sub(r"%\(ENV_(\w+)\)s", lambda m: env[m.group(1)], command))
