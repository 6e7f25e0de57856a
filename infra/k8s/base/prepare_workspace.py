"""Prepare the trainer's workspace: a git checkout of the repository with its DVC-tracked data.

Kubernetes runs this as an init container of the retrain worker and of the bootstrap Job, in
the trainer's own image (it holds DVC, and dulwich, the git library DVC uses: no git binary
and no second image needed), before the worker starts:

1. clone GIT_REPOSITORY at GIT_REF (a branch or a tag) into TRAINER_REPO_ROOT, unless an
   earlier run in this pod already did (the emptyDir outlives a container restart). A private
   repository's URL, token included, comes from the file GIT_REPOSITORY_FILE when it exists,
   so that the token is in neither a ConfigMap nor a command line;
2. hand DVC its remote's settings and credentials when the pod has them: the file
   DVC_CONFIG_LOCAL_FILE, in DVC's own config format, becomes the checkout's .dvc/config.local;
3. make data/iris.csv match its DVC pointer: `dvc pull`, or where no remote holds it,
   `iris-mlops data bootstrap`, which regenerates version 1 offline and refuses any other.

The worker then trains on what this checkout's commit records, and its lineage tags name
that commit. Usage (the settings come from the environment):

    python prepare_workspace.py
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dulwich import porcelain
from dulwich.repo import Repo

DATA_POINTER = "data/iris.csv.dvc"


def log(message: str) -> None:
    print(f"prepare-workspace: {message}", file=sys.stderr, flush=True)


def repository_url() -> str:
    secret_file = Path(os.environ.get("GIT_REPOSITORY_FILE", "/run/secrets/git/repository"))
    if secret_file.is_file():
        return secret_file.read_text().strip()
    return os.environ["GIT_REPOSITORY"]


def checkout(url: str, ref: str, workspace: Path) -> str:
    """Clone `ref` of `url` into `workspace` (an empty folder) and return its commit."""
    if (workspace / ".git").is_dir():
        with Repo(str(workspace)) as repo:
            commit = repo.head().decode()
        log(f"{workspace} is already a checkout (commit {commit}); kept")
        return commit
    workspace.mkdir(parents=True, exist_ok=True)
    repo = porcelain.clone(url, str(workspace), branch=ref, checkout=True, errstream=io.BytesIO())
    try:
        commit = repo.head().decode()
    finally:
        repo.close()
    log(f"cloned {ref} into {workspace} (commit {commit})")
    return commit


def configure_dvc_remote(workspace: Path) -> None:
    config = Path(os.environ.get("DVC_CONFIG_LOCAL_FILE", "/run/secrets/dvc/config.local"))
    if config.is_file():
        shutil.copyfile(config, workspace / ".dvc" / "config.local")
        log("DVC remote settings taken from the pod's secret")


def fetch_data(workspace: Path) -> None:
    pulled = subprocess.run(
        ["dvc", "pull", "--quiet", DATA_POINTER], cwd=workspace, check=False
    ).returncode
    if pulled == 0:
        log("data pulled from the DVC remote")
        return
    log("no DVC remote could provide the data: trying to regenerate version 1")
    subprocess.run(["iris-mlops", "data", "bootstrap"], cwd=workspace, check=True)


def main() -> int:
    workspace = Path(os.environ.get("TRAINER_REPO_ROOT", "/workspace"))
    checkout(repository_url(), os.environ.get("GIT_REF", "main"), workspace)
    configure_dvc_remote(workspace)
    try:
        fetch_data(workspace)
    except subprocess.CalledProcessError as exc:
        log(f"the data could not be prepared ({exc}); see the lines above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
