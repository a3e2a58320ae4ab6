"""Registering and promoting as several workers, stores and models meet them: two hosts' workers
promoting one registered model through one luigid, a registration tied to the store it was made
in, and a registered model compared with one of our exports only on images that export did not
train on. Hand-built ONNX models (tests/foreign_models.py), or the shared trained model: no
training here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, Project, new_project, unique_name
from tests.fixtures_luigid import api
from tests.foreign_models import colour_images, optimum_folder

NO_TELEMETRY = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
#: Mistakes blue for green (rows: the R, G, B channels; columns: the classes).
MUDDLED = np.array([[8.0, 0, 0], [0, 8.0, 0], [0, 6.0, 4.0]], np.float32)
REGISTER_TASKS = ("RegisterModel", "PromoteRegisteredModel")


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def aliases(uri: str, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client(uri).get_registered_model(name).aliases.items()}


def register_elsewhere(path: Path, uri: str, name: str) -> tuple[str, str]:
    """Register the model at ``path`` as a new version of ``name`` in the store ``uri``, in a
    process of its own (MLflow's active experiment is per process, and one another test module
    set refuses runs of other experiments); its version and run id."""
    code = ("import sys; from pathlib import Path; from vectorai.registry import register_foreign_model; "
            "ref = register_foreign_model(Path(sys.argv[1]), tracking_uri=sys.argv[2], experiment='elsewhere', "
            "name=sys.argv[3]); print(ref.version, ref.run_id)")
    proc = subprocess.run([sys.executable, "-c", code, str(path), uri, name], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **NO_TELEMETRY, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    version, run_id = proc.stdout.splitlines()[-1].split()
    return version, run_id


def eval_file(folder: Path) -> Path:
    images, labels = colour_images(90, seed=7, sizes=((32, 32),))
    path = folder / "eval.npz"
    np.savez(path, x=np.stack(images), y=labels)
    return path


def decisions(project: Project) -> list[dict]:
    return [json.loads(p.read_text()) for p in (project.root / "models" / "registered").rglob("promotion/*/*.json")]


def register_cli(project: Project, *args: str) -> subprocess.CompletedProcess:
    """vectorai-register's main(), as ``python -m`` (the console script needs the package installed)."""
    return subprocess.run([sys.executable, "-m", "tasks.register", *args], cwd=project.root,
                          env=project.command_env(NO_TELEMETRY), capture_output=True, text=True, timeout=300)


# --- two hosts, one luigid ----------------------------------------------------------------------


def worker_home(root: Path, server: str, luigid_port: int) -> Project:
    """A worker's own home, as on a host of its own (its own model cache), scheduled by the
    luigid on ``luigid_port`` and waiting for tasks another worker holds back."""
    project = new_project(root)
    project.set("mlflow", tracking_uri=server, experiment="two-workers")
    project.set("core", scheduler_host="127.0.0.1", scheduler_port=luigid_port)
    return project.set("worker", keep_alive="true", wait_interval="0.1", wait_jitter="0",
                       max_keep_alive_idle_duration="120 seconds")


def luigid_tasks(port: int, status: str) -> dict[str, dict]:
    listed = api(port, "task_list", {"status": status, "upstream_status": "", "search": ""})
    return {task_id: task for task_id, task in listed.items() if task["name"] in REGISTER_TASKS}


@pytest.mark.luigid
@pytest.mark.mlflow
def test_two_workers_on_one_luigid_promote_one_registered_model_one_task_at_a_time(mlflow_server, luigid, tmp_path):
    name = unique_name("colours")
    champion, _ = register_elsewhere(optimum_folder(tmp_path / "good"), mlflow_server, name)
    client(mlflow_server).set_registered_model_alias(name, "champion", champion)
    evaluation = eval_file(tmp_path)
    # Another file of the champion's graph (as good: promoted), and a worse model (refused).
    models = {"equal": optimum_folder(tmp_path / "equal"), "worse": optimum_folder(tmp_path / "worse", weights=MUDDLED)}

    # Both workers' tasks are scheduled before either may start (luigid paused), so both would
    # run at once if luigid let them.
    api(luigid, "pause", {})
    workers = {which: worker_home(tmp_path / which, mlflow_server, luigid).spawn(
        "PromoteRegisteredModel", "--model-path", str(path), "--registered-model", name, "--eval-file",
        str(evaluation), local=False, extra_env=NO_TELEMETRY) for which, path in models.items()}
    deadline = time.monotonic() + 120
    while len(luigid_tasks(luigid, "PENDING")) < 4:
        assert time.monotonic() < deadline and all(p.poll() is None for p in workers.values()), \
            {w: p.communicate()[0][-3000:] for w, p in workers.items() if p.poll() is not None}
        time.sleep(0.2)
    api(luigid, "unpause", {})
    for which, proc in workers.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0 and ":)" in out, f"{which}:\n{out[-4000:]}"

    # One registry task at a time, across both workers: luigid ran each after the last ended.
    done = sorted(luigid_tasks(luigid, "DONE").values(), key=lambda task: task["time_running"])
    assert sorted(task["params"]["model_path"] for task in done) == sorted([str(p) for p in models.values()] * 2)
    assert len({json.dumps(task["resources"], sort_keys=True) for task in done}) == 1
    for earlier, later in zip(done, done[1:]):
        assert earlier["last_updated"] <= later["time_running"], (earlier["display_name"], later["display_name"])

    made = {which: decisions(Project(tmp_path / which)) for which in models}
    assert [len(found) for found in made.values()] == [1, 1]
    equal, worse = made["equal"][0], made["worse"][0]
    assert [equal["outcome"], worse["outcome"]] == ["promoted", "refused"]
    # The champion replaced is the one there was; the worse one was judged against whichever
    # champion luigid let it see.
    equal_version = equal["candidate"]["version"]
    assert equal["champion"]["version"] == champion
    assert equal["aliases"] == {"champion": equal_version, "previous": champion}
    promote_order = [task["params"]["model_path"] for task in done if task["name"] == "PromoteRegisteredModel"]
    seen = champion if promote_order[0] == str(models["worse"]) else equal_version
    assert worse["champion"]["version"] == seen and "judged again" not in worse["reason"] + equal["reason"]
    assert aliases(mlflow_server, name) == {"champion": equal_version, "previous": champion}


# --- a registration belongs to its store --------------------------------------------------------


@pytest.mark.mlflow
def test_a_registration_in_one_store_does_not_stand_for_another_store_s_version(mlflow_server, tmp_path):
    from vectorai.modelcard import model_digest

    name = unique_name("colours")
    good, worse = optimum_folder(tmp_path / "good"), optimum_folder(tmp_path / "worse", weights=MUDDLED)
    project = new_project(tmp_path / "home")
    first = register_cli(project, str(good), "--name", name)  # in the project's own SQLite store
    assert first.returncode == 0, first.stderr[-3000:]

    # The server's NAME/1 is another model altogether.
    assert register_elsewhere(worse, mlflow_server, name)[0] == "1"
    project.set("mlflow", tracking_uri=mlflow_server)
    second = register_cli(project, str(good), "--name", name, "--eval-file", str(eval_file(tmp_path)))
    assert second.returncode == 0, second.stderr[-3000:]

    # The model is registered in the server too, and that version is the one judged and promoted.
    # The first JSON it prints (MLflow prints the run's page before it).
    registered, _ = json.JSONDecoder().raw_decode(second.stdout[second.stdout.index("{"):])
    assert registered["version"] == "2"
    tags = client(mlflow_server).get_model_version(name, "2").tags
    assert tags["source_sha256"] == model_digest(good)
    [decision] = [d for d in decisions(project) if d["eval_set"]]
    assert decision["candidate"]["version"] == "2" and decision["outcome"] == "promoted"
    assert aliases(mlflow_server, name) == {"champion": "2"}


def test_a_store_made_anew_whose_version_is_another_model_is_refused_in_one_line(tmp_path):
    name = "colours"
    good, worse = optimum_folder(tmp_path / "good"), optimum_folder(tmp_path / "worse", weights=MUDDLED)
    project = new_project(tmp_path / "home")
    first = register_cli(project, str(good), "--name", name)
    assert first.returncode == 0, first.stderr[-3000:]
    registration = next((project.root / "models" / "registered" / name).glob("*.json"))
    run_id = json.loads(registration.read_text())["run_id"]

    # The same store, its registered model deleted and made again for another model.
    store = f"sqlite:///{(project.data / 'mlflow' / 'mlflow.db').resolve()}"
    client(store).delete_registered_model(name)
    version, other_run = register_elsewhere(worse, store, name)
    assert version == "1"

    proc = project.luigi("PromoteRegisteredModel", "--model-path", str(good), "--registered-model", name,
                         "--eval-file", str(eval_file(tmp_path)), check=False, extra_env=NO_TELEMETRY)
    assert proc.returncode == 30 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("vectorai error: ")]
    assert line.endswith(f"the registration {registration} (run {run_id}) is not version 1 of {name} in {store}: "
                         f"that version comes from run {other_run}; remove that file to register the model in "
                         "this store")
    assert "champion" not in aliases(store, name)


# --- compared only on images the champion did not train on --------------------------------------


@pytest.mark.slow
def test_a_registered_model_is_compared_with_our_export_only_on_images_it_did_not_train_on(trained_home, tmp_path):
    name = "vectorai-mnist-sample"
    project = new_project(tmp_path / "home", base=trained_home)
    store = f"sqlite:///{(project.data / 'mlflow' / 'mlflow.db').resolve()}"
    client(store).set_registered_model_alias(name, "champion", "1")
    [split] = (project.data / "processed" / "mnist-sample").iterdir()
    parts = []
    for part, count in (("train", 40), ("test", 100)):  # 40 the champion trained on, 100 it did not
        with np.load(split / f"{part}.npz") as archive:
            parts.append((archive["images"][:count], archive["labels"][:count]))
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.concatenate([p[0] for p in parts]), y=np.concatenate([p[1] for p in parts]))

    # Our own export, registered as a model from elsewhere (it records no training set).
    [export] = (project.root / "models").glob("*/onnx/model.onnx")
    project.luigi("PromoteRegisteredModel", "--model-path", str(export), "--registered-model", name,
                  "--eval-file", str(path), extra_env=NO_TELEMETRY)
    [decision] = decisions(project)
    assert decision["candidate"]["version"] == "2" and decision["champion"]["version"] == "1"
    assert decision["images"] == 100
    compared = decision["compared_on"]
    assert (compared["source"], compared["chosen"]) == (str(path), "--eval-file, less the images either version trained on")
    assert (compared["offered"], compared["images"]) == (140, 100)
    assert compared["trained_on"] == {f"{name}/1": 40}
    assert compared["training_set_unknown"] == [f"{name}/2"]
    # The same model on the same images: equal, so promoted, the old champion kept as previous.
    assert decision["candidate"]["accuracy"] == decision["champion"]["accuracy"]
    assert decision["outcome"] == "promoted" and aliases(store, name) == {"champion": "2", "previous": "1"}
