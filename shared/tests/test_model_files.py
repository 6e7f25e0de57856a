"""The one model loader: what it loads, what it refuses, and that a refusal says nothing of
the files (the message reaches GET /model and job records)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io
import yaml
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from iris_shared.model_files import (
    MAX_LISTED_FILES,
    UnsafeModelError,
    check_listed_size,
    load_model_files,
)
from iris_shared.schemas import FEATURE_NAMES, SPECIES

SIGNATURE = {
    "inputs": json.dumps([{"name": n, "type": "double", "required": True} for n in FEATURE_NAMES]),
    "outputs": json.dumps([{"type": "string", "required": True}]),
}


def iris_labels(species: tuple[str, ...] = SPECIES) -> tuple[np.ndarray, np.ndarray]:
    data = load_iris()
    keep = data.target < len(species)
    return data.data[keep], np.asarray(species)[data.target[keep]]


def fitted(estimator: Any, species: tuple[str, ...] = SPECIES) -> Any:
    features, labels = iris_labels(species)
    return estimator.fit(features, labels)


def mlmodel(model_file: str = "model.skops", **sklearn: Any) -> dict[str, Any]:
    return {
        "flavors": {
            "sklearn": {
                "pickled_model": model_file,
                "serialization_format": "skops",
                # What a crafted file would offer: never used.
                "skops_trusted_types": ["builtins.exec", "posix.system"],
                **sklearn,
            }
        },
        "signature": SIGNATURE,
    }


def model_folder(
    root: Path, estimator: Any | None = None, *, description: dict[str, Any] | None = None
) -> Path:
    folder = root / "model"
    folder.mkdir(parents=True)
    if estimator is None:
        estimator = fitted(
            Pipeline([("scaler", StandardScaler()), ("lr", LogisticRegression(max_iter=1000))])
        )
    skops.io.dump(estimator, folder / "model.skops")
    (folder / "MLmodel").write_text(yaml.safe_dump(description or mlmodel()))
    return folder


def refusal(folder: Path, **kwargs: Any) -> str:
    with pytest.raises(UnsafeModelError) as refused:
        load_model_files(folder, **kwargs)
    return str(refused.value)


def test_a_servable_model_loads_with_the_species_as_its_classes(tmp_path: Path) -> None:
    model = load_model_files(model_folder(tmp_path))

    assert tuple(model.classes_) == SPECIES
    features, _ = iris_labels()
    assert model.predict(features[:1])[0] == "Iris-setosa"


def test_a_forest_loads_with_the_deployments_trusted_types(tmp_path: Path) -> None:
    forest = fitted(RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0))

    model = load_model_files(model_folder(tmp_path, forest))

    assert len(model.estimators_) == 5


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",)


@pytest.mark.parametrize("saved_as", ["pickle", "cloudpickle"])
def test_a_pickled_model_is_refused_unread(tmp_path: Path, saved_as: str) -> None:
    marker = tmp_path / "unpickled"
    folder = model_folder(
        tmp_path,
        description=mlmodel("model.pkl", serialization_format=saved_as),
    )
    (folder / "model.pkl").write_bytes(pickle.dumps(RunsCodeWhenUnpickled(marker)))

    message = refusal(folder)

    assert f"it is saved as {saved_as!r}, not 'skops'" in message
    assert not marker.exists()


@pytest.fixture
def outside_model(tmp_path: Path) -> Path:
    """A perfectly loadable skops file outside the model folder: only its place is wrong."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    estimator = fitted(Pipeline([("lr", LogisticRegression(max_iter=1000))]))
    skops.io.dump(estimator, outside / "secret.skops")
    return outside / "secret.skops"


@pytest.mark.parametrize("kind", ["absolute", "dot-dot", "symlink", "symlinked-folder"])
def test_a_model_file_outside_the_folder_is_refused(
    tmp_path: Path, outside_model: Path, kind: str
) -> None:
    folder = model_folder(tmp_path / "version")
    if kind == "absolute":
        name = str(outside_model)
    elif kind == "dot-dot":
        name = f"../../elsewhere/{outside_model.name}"
    elif kind == "symlink":
        (folder / "link.skops").symlink_to(outside_model)
        name = "link.skops"
    else:
        (folder / "sub").symlink_to(outside_model.parent, target_is_directory=True)
        name = f"sub/{outside_model.name}"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel(name)))

    message = refusal(folder)

    assert message == "its model file lies outside the model folder"
    assert str(outside_model.parent) not in message


def test_the_model_folder_itself_is_no_model_file(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel(".")))

    assert refusal(folder) == "its model file lies outside the model folder"


def test_a_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    (folder / "alias.skops").symlink_to(folder / "model.skops")
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel("alias.skops")))

    assert tuple(load_model_files(folder).classes_) == SPECIES


def test_a_model_file_over_the_cap_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    size = (folder / "model.skops").stat().st_size

    assert load_model_files(folder, max_bytes=size) is not None
    assert refusal(folder, max_bytes=size - 1) == f"its model file is larger than {size - 1} bytes"


def test_a_model_file_that_unpacks_beyond_the_cap_is_refused(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    with zipfile.ZipFile(folder / "model.skops", "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("padding.npy", b"\0" * 2_000_000)
    packed = (folder / "model.skops").stat().st_size
    assert packed < 1_000_000

    message = refusal(folder, max_bytes=1_000_000)

    assert message == "its model file unpacks to more than 1000000 bytes"


@pytest.mark.parametrize(
    ("species", "labels"),
    [
        (SPECIES[:2], None),
        (("Iris-virginica", "Iris-setosa", "Iris-martian"), None),
        (SPECIES, (0, 1, 2)),
    ],
    ids=["two-species", "a-stranger", "numbers"],
)
def test_a_model_whose_classes_are_not_the_species_is_refused(
    tmp_path: Path, species: tuple[str, ...], labels: tuple[int, ...] | None
) -> None:
    features, names = iris_labels(species)
    targets = names if labels is None else np.searchsorted(np.asarray(species), names)
    estimator = Pipeline([("lr", LogisticRegression(max_iter=1000))]).fit(features, targets)

    message = refusal(model_folder(tmp_path, estimator))

    assert message == f"its classes are not the three species {list(SPECIES)}"
    assert "martian" not in message


def test_a_tree_pointing_outside_itself_is_refused(tmp_path: Path) -> None:
    forest = fitted(RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0))
    folder = model_folder(tmp_path, forest)
    # Edit the saved node array as an attacker would, then check the edit took.
    path = folder / "model.skops"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    schema = json.loads(members["schema.json"])
    nodes = _find_node_arrays(schema)
    assert nodes
    changed = False
    for file in nodes:
        array = np.load(io.BytesIO(members[file]), allow_pickle=False)
        if array.dtype.names and "left_child" in array.dtype.names:
            array["left_child"][0] = 10_000
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            members[file] = buffer.getvalue()
            changed = True
            break
    assert changed
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)

    assert refusal(folder) == "a decision tree in it points outside itself"


def _find_node_arrays(schema: Any) -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        if schema.get("__class__") == "ndarray" and "file" in schema:
            found.append(schema["file"])
        for value in schema.values():
            found.extend(_find_node_arrays(value))
    elif isinstance(schema, list):
        for value in schema:
            found.extend(_find_node_arrays(value))
    return found


def test_a_skops_file_with_untrusted_types_is_refused_without_naming_them(
    tmp_path: Path,
) -> None:
    # A type skops does not trust by default, and this deployment does not either.
    folder = model_folder(tmp_path, _Untrusted())

    message = refusal(folder)

    assert message == (
        "its model file is not a skops file this deployment can load "
        "(damaged, or holding types it does not trust)"
    )
    assert "_Untrusted" not in message


class _Untrusted:
    classes_ = SPECIES


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a zip at all", "its model file is not a skops file"),
        (b"", "its model file is not a skops file"),
    ],
)
def test_a_damaged_model_file_is_refused(tmp_path: Path, content: bytes, expected: str) -> None:
    folder = model_folder(tmp_path)
    (folder / "model.skops").write_bytes(content)

    assert refusal(folder) == expected


@pytest.mark.parametrize(
    ("mlmodel_text", "expected"),
    [
        (None, "its MLmodel file is missing"),
        ("flavors: [unclosed", "its MLmodel file is not valid YAML"),
        ("- a list", "its MLmodel file is not a YAML mapping"),
        ("x: " + "a" * (1024 * 1024), "its MLmodel file is larger than 1048576 bytes"),
        (
            yaml.safe_dump(mlmodel(serialization_format="<script>alert(1)</script>")),
            "it is saved as an unknown format, not 'skops' (pickle formats can run code when "
            "loaded)",
        ),
        (yaml.safe_dump(mlmodel(pickled_model=None)), "its model file is not named"),
        (yaml.safe_dump(mlmodel("missing.skops")), "its model file is missing"),
    ],
    ids=["missing", "not-yaml", "not-a-mapping", "too-big", "unknown-format", "unnamed", "gone"],
)
def test_a_bad_mlmodel_is_refused_with_a_fixed_reason(
    tmp_path: Path, mlmodel_text: str | None, expected: str
) -> None:
    folder = model_folder(tmp_path)
    if mlmodel_text is None:
        (folder / "MLmodel").unlink()
    else:
        (folder / "MLmodel").write_text(mlmodel_text)

    assert refusal(folder) == expected


def test_a_signature_that_is_not_the_measurements_is_refused_unquoted(tmp_path: Path) -> None:
    description = mlmodel()
    description["signature"]["inputs"] = json.dumps([{"name": "<b>evil</b>", "type": "double"}])
    folder = model_folder(tmp_path, description=description)

    message = refusal(folder)

    assert "evil" not in message
    assert message.startswith("its signature does not take the four measurements")


@dataclass(frozen=True)
class Listed:
    path: str
    is_dir: bool
    file_size: int | None


def listing(tree: dict[str, list[Listed]]) -> Any:
    return lambda folder: tree[folder]


def test_a_listing_within_the_cap_gives_its_total() -> None:
    tree = {
        "": [Listed("MLmodel", False, 700), Listed("code", True, None)],
        "code": [Listed("code/helper.py", False, 300)],
    }

    assert check_listed_size(listing(tree), max_bytes=1000) == 1000


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (
            {
                "": [Listed("MLmodel", False, 700), Listed("big", True, None)],
                "big": [Listed("big/blob", False, 301)],
            },
            "its files are larger than 1000 bytes",
        ),
        ({"": [Listed("model.skops", False, None)]}, "the size of its files is unknown"),
        (
            {"": [Listed(f"f{i}", False, 0) for i in range(MAX_LISTED_FILES + 1)]},
            f"it has more than {MAX_LISTED_FILES} files",
        ),
    ],
    ids=["too-big", "unknown-size", "too-many"],
)
def test_a_listing_beyond_the_cap_is_refused_before_any_download(
    tree: dict[str, list[Listed]], expected: str
) -> None:
    with pytest.raises(UnsafeModelError, match=expected):
        check_listed_size(listing(tree), max_bytes=1000)
