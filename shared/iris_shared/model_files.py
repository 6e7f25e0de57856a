"""The one loader of a registered model's files, for every service that loads a model.

A version's files are whatever its writer put in the registry, and anyone who can write to
the registry can write them: nothing in them is trusted. `load_model_files` reads a
downloaded MLflow model folder and returns its fitted estimator only when:

- its `MLmodel` (a small YAML file, read with `yaml.safe_load`) meets the serving contract
  (`iris_shared.servable`: the skops format, the four measurements as the signature);
- the model file it names lies strictly inside the folder (no absolute path, no `..`, no
  symlink leading out) and, with the folder as a whole, stays within `MODEL_MAX_BYTES`,
  unpacked as well as packed;
- skops loads it with this deployment's trusted types (`SKOPS_TRUSTED_TYPES`, never the
  list the MLmodel file offers);
- the estimator is a fitted classifier of exactly the three species, and any decision tree
  in it only points at nodes and features it has (skops trusts trees on our word, and
  scikit-learn follows their indices unchecked).

Anything else raises `UnsafeModelError`, whose message comes from a fixed vocabulary and is
safe to show anyone (an API answer, a job's error): it never quotes the files or a library's
error text. The details (the path named, the classes found, skops' own error) are a note on
the exception, and its cause: the traceback in the caller's log shows them, `str()` never.

`check_listed_size` applies the size cap before anything is downloaded, from the artefact
store's listing. MLflow itself is the caller's (iris_shared needs no MLflow): it passes a
function that lists one folder of the version.

The gateway never imports this module (it needs skops, from the `iris-shared[models]` extra).
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import skops.io
import yaml

from iris_shared.schemas import SPECIES
from iris_shared.servable import SKOPS_TRUSTED_TYPES, servability_problems

# An iris model is tens of kilobytes; a forest of deep trees a few megabytes.
MODEL_MAX_BYTES = 50 * 1024 * 1024
MLMODEL_MAX_BYTES = 1024 * 1024
# A listing with more entries than this is refused before anything is downloaded.
MAX_LISTED_FILES = 1000
_MLMODEL = "MLmodel"
# scikit-learn's marks in a tree's arrays: a leaf has no children and no split feature.
_TREE_LEAF = -1
_TREE_UNDEFINED = -2


class UnsafeModelError(Exception):
    """A model version's files cannot be loaded safely; the message is safe to show."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if detail:
            # Printed with the traceback (in the log), never part of str().
            self.add_note(f"detail: {detail[:2000]}")


class ListedFile(Protocol):
    """One entry of an artefact listing (MLflow's `FileInfo`)."""

    @property
    def path(self) -> str: ...

    @property
    def is_dir(self) -> bool: ...

    @property
    def file_size(self) -> int | None: ...


def _refuse(reason: str, detail: str | None = None, **context: object) -> UnsafeModelError:
    facts = [detail] if detail else []
    facts += [f"{key}={value!r}" for key, value in context.items()]
    return UnsafeModelError(reason, "; ".join(facts) or None)


def check_listed_size(
    list_folder: Callable[[str], Iterable[ListedFile]], max_bytes: int = MODEL_MAX_BYTES
) -> int:
    """The total size of a version's files, from its listing; refused beyond `max_bytes`.

    `list_folder("")` lists the version's top folder, `list_folder(entry.path)` a sub-folder.
    A file of unknown size is refused: nothing would bound its download.
    """
    total = 0
    seen = 0
    folders = [""]
    while folders:
        for entry in list_folder(folders.pop()):
            seen += 1
            if seen > MAX_LISTED_FILES:
                raise _refuse(f"it has more than {MAX_LISTED_FILES} files")
            if entry.is_dir:
                folders.append(entry.path)
            elif entry.file_size is None:
                raise _refuse("the size of its files is unknown", path=entry.path)
            else:
                total += entry.file_size
                if total > max_bytes:
                    raise _refuse(f"its files are larger than {max_bytes} bytes")
    return total


def load_model_files(model_dir: Path, *, max_bytes: int = MODEL_MAX_BYTES) -> Any:
    """The fitted estimator of a downloaded MLflow model folder, if it is safe to load."""
    root = model_dir.resolve()
    mlmodel = _read_mlmodel(root)
    problems = servability_problems(mlmodel)
    if problems:
        raise _refuse("; ".join(problems), model_dir=str(root))
    relative = mlmodel["flavors"]["sklearn"].get("pickled_model")
    data = _read_inside(root, relative, max_bytes, "model file")
    _check_unpacked_size(data, max_bytes)
    try:
        model = skops.io.loads(data, trusted=list(SKOPS_TRUSTED_TYPES))
    except Exception as exc:
        # Untrusted types, a damaged archive, a schema skops does not know: the reason is
        # skops' text, which may quote the file.
        raise _refuse(
            "its model file is not a skops file this deployment can load "
            "(damaged, or holding types it does not trust)",
            detail=f"{type(exc).__name__}: {exc}"[:2000],
            model_dir=str(root),
        ) from exc
    _check_classifier(model)
    _check_trees(model)
    return model


def _read_mlmodel(root: Path) -> Mapping[str, Any]:
    text = _read_inside(root, _MLMODEL, MLMODEL_MAX_BYTES, "MLmodel file")
    try:
        mlmodel = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _refuse("its MLmodel file is not valid YAML", detail=str(exc)[:2000]) from exc
    if not isinstance(mlmodel, dict):
        raise _refuse("its MLmodel file is not a YAML mapping")
    return mlmodel


def _read_inside(root: Path, relative: object, max_bytes: int, what: str) -> bytes:
    """The bytes of `root/relative`, a regular file strictly inside `root`, at most max_bytes."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise _refuse(f"its {what} is not named")
    # Both separators count: a name must not climb out on any platform.
    name = PurePosixPath(relative.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts:
        raise _refuse(f"its {what} lies outside the model folder", path=relative)
    try:
        # resolve() follows every symlink on the way: what is read is where it really is.
        path = (root / relative).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise _refuse(f"its {what} is missing", path=relative, detail=str(exc)) from exc
    if path == root or not path.is_relative_to(root):
        raise _refuse(f"its {what} lies outside the model folder", path=relative, to=str(path))
    try:
        # O_NOFOLLOW: the resolved path must not have become a symlink since.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise _refuse(f"its {what} cannot be read", path=relative, detail=str(exc)) from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(f"its {what} is not a regular file", path=relative)
        if info.st_size > max_bytes:
            raise _refuse(f"its {what} is larger than {max_bytes} bytes", size=info.st_size)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _refuse(f"its {what} is larger than {max_bytes} bytes")
    return data


def _check_unpacked_size(data: bytes, max_bytes: int) -> None:
    """A skops file is a zip archive: a few kilobytes can unpack to gigabytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _refuse("its model file is not a skops file", detail=str(exc)[:2000]) from exc
    if unpacked > max_bytes:
        raise _refuse(f"its model file unpacks to more than {max_bytes} bytes", size=unpacked)


def _check_classifier(model: Any) -> None:
    if not callable(getattr(model, "predict", None)):
        raise _refuse("it is not a classifier (no predict)")
    try:
        classes = list(model.classes_)
    except Exception as exc:
        raise _refuse("it is not a fitted classifier (no classes)", detail=repr(exc)) from exc
    if not all(isinstance(label, str) for label in classes) or tuple(classes) != SPECIES:
        raise _refuse(
            f"its classes are not the three species {list(SPECIES)}",
            detail=repr(classes)[:2000],
        )


def _check_trees(model: Any) -> None:
    """Every decision tree in the model only points at its own nodes and the model's features.

    Otherwise a crafted tree (skops loads it: `sklearn.tree._tree.Tree` is trusted) would make
    predict read memory out of bounds, or crash the process.
    """
    pending = [model]
    for _ in range(100_000):
        if not pending:
            return
        current = pending.pop()
        steps = getattr(current, "steps", None)
        if isinstance(steps, list):
            pending.extend(step for _, step in steps if step is not None)
        estimators = getattr(current, "estimators_", None)
        if estimators is not None:
            pending.extend(np.asarray(estimators, dtype=object).ravel().tolist())
        tree = getattr(current, "tree_", None)
        if tree is not None and not _tree_is_sound(tree, getattr(current, "n_features_in_", 4)):
            raise _refuse("a decision tree in it points outside itself")
    raise _refuse("it holds too many estimators")


def _tree_is_sound(tree: Any, n_features: int) -> bool:
    try:
        nodes = int(tree.node_count)
        left = np.asarray(tree.children_left)
        right = np.asarray(tree.children_right)
        feature = np.asarray(tree.feature)
        values = np.asarray(tree.value)
    except Exception:
        return False
    if nodes < 1 or not all(len(a) == nodes for a in (left, right, feature, values)):
        return False
    index = np.arange(nodes)
    leaf = left == _TREE_LEAF
    # scikit-learn numbers a node's children after it: that also rules out any cycle.
    split = ~leaf & (left > index) & (left < nodes) & (right > index) & (right < nodes)
    split &= (feature >= 0) & (feature < n_features)
    leaf_ok = leaf & (right == _TREE_LEAF) & (feature == _TREE_UNDEFINED)
    return bool(np.all(split | leaf_ok))
