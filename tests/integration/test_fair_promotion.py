"""The chain's own correctness across seeds: PromoteModel compares two versions only on images
neither trained on, and StreamData's ids never hand a new image an id already stored.

Two models of mnist-sample: the shared default one (seed 42) and a 1-epoch one with seed 7, each
with its own split. Images are matched by their pixels here, not by vectorai's digests, so the
test does not take the code's word for which image is which."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Project, new_project

pytestmark = pytest.mark.slow

NAME = "vectorai-mnist-sample"
SEED_ARGS = {42: [], 7: ["--seed", "7", "--epochs", "1"]}


def client(project: Project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project.data / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions_by_seed(project: Project) -> dict[int, str]:
    """Seed -> the registered version of that seed's export."""
    found = {}
    for path in (project.root / "models").glob("*/onnx/model.json"):
        seed = json.loads((path.parent.parent / "keras" / "metrics.json").read_text())["config"]["seed"]
        found[seed] = json.loads(path.read_text())["registered_model"]["version"]
    return found


def split_dir(project: Project, seed: int) -> Path:
    [found] = [d for d in (project.data / "processed" / "mnist-sample").iterdir()
               if json.loads((d / "split.json").read_text())["seed"] == seed]
    return found


def images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as archive:
        return archive["images"], archive["labels"]


def key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def trained_on(project: Project, seed: int) -> set[bytes]:
    return {key(im) for part in ("train", "val") for im in images(split_dir(project, seed) / f"{part}.npz")[0]}


def decision_of(project: Project, version: str) -> dict:
    [model_json] = [p for p in (project.root / "models").glob("*/onnx/model.json")
                    if json.loads(p.read_text())["registered_model"]["version"] == version]
    [path] = (model_json.parent.parent / "promotion").glob("*.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def two_seeds(two_versions) -> Path:
    """The default model (seed 42) and a 1-epoch seed-7 one (SEED_ARGS[7]), exported and
    registered, neither promoted."""
    assert sorted(versions_by_seed(Project(two_versions))) == [7, 42]
    return two_versions


def neither_saw(project: Project, tmp_path: Path, candidate: int, extra: int = 0) -> tuple[Path, int]:
    """An --eval-file of the candidate's test images that neither seed trained on, plus ``extra``
    images each seed trained on; and how many of its images neither saw."""
    seen = trained_on(project, 42) | trained_on(project, 7)
    x, y = images(split_dir(project, candidate) / "test.npz")
    unseen = np.array([key(im) not in seen for im in x])
    parts_x, parts_y = [x[unseen]], [y[unseen]]
    for seed in (42, 7):
        train_x, train_y = images(split_dir(project, seed) / "train.npz")
        parts_x.append(train_x[:extra])
        parts_y.append(train_y[:extra])
    path = tmp_path / f"neither-saw-{candidate}-{extra}.npz"
    np.savez(path, x=np.concatenate(parts_x), y=np.concatenate(parts_y))
    return path, int(unseen.sum())


@pytest.mark.parametrize("first, second", [(42, 7), (7, 42)], ids=["seed-42-then-7", "seed-7-then-42"])
def test_promotion_is_decided_on_images_neither_version_trained_on(two_seeds, tmp_path, first, second):
    base = new_project(tmp_path / "base", base=two_seeds)
    versions = versions_by_seed(base)
    eval_file, clean = neither_saw(base, tmp_path, second)
    decisions, champions = {}, {}
    for how, extra in (("test split", []), ("eval file", ["--eval-file", str(eval_file)])):
        project = new_project(tmp_path / how.replace(" ", "-"), base=two_seeds)
        # The first seed's version is the champion (as PromoteModel would have made it).
        client(project).set_registered_model_alias(NAME, "champion", versions[first])
        project.luigi("PromoteModel", *SEED_ARGS[second], *extra)
        decisions[how] = decision_of(project, versions[second])
        champions[how] = str(client(project).get_model_version_by_alias(NAME, "champion").version)

    split, file = decisions["test split"], decisions["eval file"]
    # The same decision, on the same images, as on a file of images neither version saw.
    assert champions["test split"] == champions["eval file"]
    assert (split["outcome"], split["reason"]) == (file["outcome"], file["reason"])
    assert split["images"] == file["images"] == clean > 500
    assert split["candidate"]["accuracy"] == file["candidate"]["accuracy"]
    assert split["champion"] == file["champion"] and split["champion"]["version"] == versions[first]
    # The decision names that set: where it came from, how it was chosen, its digest and size.
    compared = split["compared_on"]
    assert compared["source"].startswith("test split ") and "content digest" in compared["chosen"]
    assert compared["images"] == clean and compared["digest"] == file["compared_on"]["digest"]
    assert compared["trained_on"] == {f"{NAME}/{versions[first]}": 0, f"{NAME}/{versions[second]}": 0}
    assert compared["training_set_unknown"] == []
    # The better model (TEST_EPOCHS against 1) wins in either order.
    assert champions["test split"] == versions[42]


def test_an_eval_file_loses_the_images_either_version_trained_on(two_seeds, tmp_path):
    project = new_project(tmp_path / "home", base=two_seeds)
    versions = versions_by_seed(project)
    eval_file, clean = neither_saw(project, tmp_path, 7, extra=40)
    client(project).set_registered_model_alias(NAME, "champion", versions[42])
    project.luigi("PromoteModel", *SEED_ARGS[7], "--eval-file", str(eval_file))
    record = decision_of(project, versions[7])
    assert record["images"] == clean and record["compared_on"]["offered"] == clean + 80
    # Each seed's 40 training images: both versions trained on all 80 (see below).
    assert record["compared_on"]["trained_on"] == {f"{NAME}/{versions[42]}": 80, f"{NAME}/{versions[7]}": 80}
    tags = {seed: client(project).get_model_version(NAME, v).tags for seed, v in versions.items()}
    # The registry names each version's split and what it trained on: for two seeds, the same
    # test split, and the same images trained on (everything outside test and stream), drawn
    # differently into train and validation.
    assert tags[42]["split_test_digest"] == tags[7]["split_test_digest"]
    assert trained_on(project, 42) == trained_on(project, 7)
    assert tags[42]["trained_on_digest"] == tags[7]["trained_on_digest"]
    assert int(tags[7]["trained_on_images"]) == len(trained_on(project, 7))


def stored_images(project: Project) -> list[bytes]:
    with sqlite3.connect(project.data / "predictions.sqlite") as conn:
        return [key(np.asarray(Image.open(io.BytesIO(image)))) for (image,) in
                conn.execute("SELECT image FROM prediction")]


def test_two_seeds_and_two_files_of_one_name_store_one_row_per_distinct_image(two_seeds, tmp_path):
    project = new_project(tmp_path / "home", base=two_seeds)
    project.luigi("PredictTask", "--run-at", "seed-42")
    project.luigi("PredictTask", *SEED_ARGS[7], "--run-at", "seed-7")
    sent = {key(im) for seed in (42, 7) for im in images(split_dir(project, seed) / "stream.npz")[0]}
    assert sorted(stored_images(project)) == sorted(sent)

    # Two sample files of the same name, holding different images.
    train_x, train_y = images(split_dir(project, 42) / "train.npz")
    for folder, part in (("a", slice(0, 30)), ("b", slice(30, 60))):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "holdout.npz", x=train_x[part], y=train_y[part])
        project.luigi("StreamData", "--sample-file", str(tmp_path / folder / "holdout.npz"))
        sent |= {key(im) for im in train_x[part]}
    project.luigi("PredictTask", "--require-stream", "false", "--run-at", "files")
    assert sorted(stored_images(project)) == sorted(sent)
