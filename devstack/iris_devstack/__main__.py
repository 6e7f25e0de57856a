"""`python -m iris_devstack up|down|status`: what `make up`, `make down` and `make status` run."""

from __future__ import annotations

import argparse
from pathlib import Path

from iris_devstack import stack
from iris_devstack.processes import REPO_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m iris_devstack", description=(stack.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
        help="the checkout whose stack it is: its .env, its supervisord.conf (default: this one)",
    )
    args = parser.parse_args()
    local = stack.Stack.from_env(args.root.resolve())
    {"up": local.up, "down": local.down, "status": local.status}[args.command]()


if __name__ == "__main__":
    main()
