"""Load the DVC-tracked dataset (working copy or any git revision) and describe its lineage."""

from __future__ import annotations

import hashlib
import io
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

DATA_RELATIVE_PATH = "data/iris.csv"


class DataUnavailableError(Exception):
    """The requested data (file or revision) cannot be read."""


@dataclass(frozen=True)
class Dataset:
    frame_text: str
    md5: str
    source: str
    rev: str | None

    @property
    def rows(self) -> int:
        return max(len(self.frame_text.splitlines()) - 1, 0)

    def raw_frame(self) -> pd.DataFrame:
        """Every cell as text, so validation sees exactly what the file says."""
        return pd.read_csv(io.StringIO(self.frame_text), dtype=str, keep_default_na=False)


def md5_of(content: bytes) -> str:
    # DVC 3 records the md5 of the file's bytes; using the same hash ties each run to `dvc add`.
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


def load_dataset(
    repo_root: Path, data_path: str = DATA_RELATIVE_PATH, rev: str | None = None
) -> Dataset:
    if rev is None:
        path = repo_root / data_path
        try:
            content = path.read_bytes()
        except FileNotFoundError as exc:
            raise DataUnavailableError(
                f"{path} does not exist; run `make data` (or `dvc pull`) to fetch it"
            ) from exc
        return _dataset(content, str(path), None)

    import dvc.api  # imported here: DVC is slow to import and only revisions need it

    try:
        content = dvc.api.read(data_path, repo=str(repo_root), rev=rev, mode="rb")
    except Exception as exc:
        raise DataUnavailableError(
            f"Unable to read {data_path} at revision {rev!r}: {exc}"
        ) from exc
    return _dataset(content, f"{data_path}@{rev}", rev)


def _dataset(content: bytes, source: str, rev: str | None) -> Dataset:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Not the codec's message: it quotes the offending bytes.
        raise DataUnavailableError(f"{source} is not UTF-8 text") from exc
    return Dataset(text, md5_of(content), source, rev)


def dvc_recorded_md5(repo_root: Path, data_path: str = DATA_RELATIVE_PATH) -> str | None:
    pointer = repo_root / f"{data_path}.dvc"
    if not pointer.exists():
        return None
    outs = yaml.safe_load(pointer.read_text()).get("outs") or [{}]
    md5 = outs[0].get("md5")
    return str(md5) if md5 else None


def git_commit(repo_root: Path) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()


def git_resolve(repo_root: Path, rev: str) -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
            cwd=repo_root,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DataUnavailableError(f"Unknown git revision {rev!r}") from exc
    return result.stdout.strip()
