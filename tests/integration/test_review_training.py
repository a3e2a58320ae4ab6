"""Reviews back into training: ReviewedData's export and SplitData --extra-train."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import new_project
from tests.review_rows import digit_image, fill
from vectorai import db
from vectorai.review import queries
from vectorai.review.dataset import export_reviewed, review_digest
from vectorai.split import load_images, save_images
from vectorai.datasets import LabelledImages


# The export reads the review and prediction tables through Peewee: on both databases, since the
# loop (review in the page, export, retrain) must work on PostgreSQL as on SQLite.
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def results(request, tmp_path):
    url = request.getfixturevalue("pg_database") if request.param == "postgres" else db.sqlite_url(
        tmp_path / "results.sqlite")
    database = db.connect(url)
    rows = fill(database)
    yield database, rows
    database.close()


def test_export_holds_the_reviewed_images_with_their_corrected_labels(results, tmp_path):
    _, rows = results
    for message_id, label in (("msg-0003", 2), ("msg-0005", 0), ("msg-0003", 1)):  # 0003 twice: the latest wins
        queries.record_review("local", message_id, label, "tester", 3)
    path = tmp_path / "reviewed.npz"
    assert export_reviewed(path, ["class0", "class1", "class2"]) == 2
    exported = load_images(path)
    assert exported.labels.tolist() == [1, 0]  # ordered by message id
    assert np.array_equal(exported.images[0], digit_image(3)) and np.array_equal(exported.images[1], digit_image(5))
    assert exported.class_names == ["class0", "class1", "class2"]
    assert rows[3]["true_label"] is None  # the message's own label was not used


def test_the_digest_names_what_the_reviews_say_not_who_or_when(results):
    queries.record_review("local", "msg-0001", 1, "alice", 3)
    first = review_digest()
    queries.record_review("local", "msg-0001", 1, "bob", 3)
    assert review_digest() == first
    queries.record_review("local", "msg-0001", 2, "bob", 3)
    changed = review_digest()
    assert changed != first and changed.count == 1 and changed.name.startswith("reviewed-1-")


def _split(project, *extra: str) -> tuple[dict, dict]:
    project.luigi("SplitData", "--dataset", "digits", *extra)
    folders = sorted((project.data / "processed" / "digits").iterdir(), key=lambda p: p.stat().st_mtime)
    folder = folders[-1]
    return folder, {name: load_images(folder / f"{name}.npz") for name in ("train", "val", "test")}


def test_extra_images_join_the_training_split_only_and_name_it(tmp_path):
    project = new_project(tmp_path / "home")
    plain_dir, plain = _split(project)
    extra_path = tmp_path / "extra.npz"
    extra_images = np.stack([digit_image(i, size=8) for i in range(12)])
    save_images(extra_path, LabelledImages(extra_images, np.arange(12) % 10, [str(i) for i in range(10)]))
    extra_dir, extra = _split(project, "--extra-train", str(extra_path))

    assert plain_dir.name.isalnum()  # without extra images the name is as before: the parameter hash alone
    assert extra_dir.name.split("-extra-12-")[1].isalnum()
    assert len(extra["train"]) == len(plain["train"]) + 12
    for name in ("val", "test"):
        assert np.array_equal(np.asarray(extra[name].images), np.asarray(plain[name].images))
    stored = {(np.asarray(image).astype(np.uint8).tobytes(), int(label))
              for image, label in zip(extra["train"].images, extra["train"].labels)}
    assert all((image.tobytes(), i % 10) in stored for i, image in enumerate(extra_images))
    # Training tells the extra images from the rest (to weight them): exactly the 12 are marked.
    from vectorai.prepare import extra_train_mask

    marked = extra_train_mask(extra_dir)
    assert extra_train_mask(plain_dir) is None and marked.sum() == 12
    assert {np.asarray(extra["train"].images[i]).astype(np.uint8).tobytes() for i in np.flatnonzero(marked)} == {
        image.tobytes() for image in extra_images}

    # Other images, same count: another name, so another model.
    save_images(extra_path, LabelledImages(extra_images[::-1].copy(), np.arange(12) % 10, [str(i) for i in range(10)]))
    other_dir, _ = _split(project, "--extra-train", str(extra_path))
    assert other_dir != extra_dir and "-extra-12-" in other_dir.name
    summary = json.loads((extra_dir / "split.json").read_text())
    assert summary["sizes"]["val"] == len(plain["val"])


def test_default_names_do_not_change(tmp_path):
    """Models named before --extra-train and reviewed_weight existed keep their names: nothing retrains."""
    import hashlib

    from tasks.common import params_hash
    from tasks.data import SplitData

    from tasks.model import TrainModel

    for task, added in ((SplitData(dataset="digits"), "extra_train"), (TrainModel(dataset="digits"), "reviewed_weight")):
        before = {k: v for k, v in task.to_str_params(only_significant=True, only_public=True).items()
                  if k not in ("extra_train", added)}
        assert params_hash(task) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]


def test_the_model_is_named_by_its_extra_images(tmp_path):
    from tasks.model import TrainModel

    extra_path = tmp_path / "extra.npz"
    np.savez(extra_path, x=np.zeros((5, 8, 8), np.uint8), y=np.arange(5))
    plain, extra = TrainModel(dataset="digits"), TrainModel(dataset="digits", extra_train=str(extra_path))
    assert "-extra-" not in plain.model_name
    first = extra.model_name
    assert re.fullmatch(r"digits-[0-9a-f]{10}-extra-5-[0-9a-f]{10}-w10", first), first
    # Another weight for the extra images is another model; without them the weight is not named.
    assert TrainModel(dataset="digits", extra_train=str(extra_path), reviewed_weight=3).model_name.endswith("-w3")
    assert TrainModel(dataset="digits", reviewed_weight=3).model_name.count("-") == 1
    np.savez(extra_path, x=np.ones((5, 8, 8), np.uint8), y=np.arange(5))  # other images, same count
    assert TrainModel(dataset="digits", extra_train=str(extra_path)).model_name != first


def test_an_extra_image_already_held_out_is_left_out(tmp_path):
    from vectorai.review.dataset import add_to_train

    names = [str(i) for i in range(3)]
    train, test, extra = tmp_path / "train.npz", tmp_path / "test.npz", tmp_path / "extra.npz"
    images = np.stack([digit_image(i, size=8) for i in range(6)])
    save_images(train, LabelledImages(images[:2], np.array([0, 1]), names))
    save_images(test, LabelledImages(images[2:4], np.array([2, 0]), names))
    save_images(extra, LabelledImages(images[3:6], np.array([0, 1, 2]), names))  # images[3] is a test image
    assert add_to_train(train, extra, held_out=[test]) == 2
    merged = load_images(train)
    assert len(merged) == 4
    assert not any(np.array_equal(image, images[3]) for image in merged.images)
