"""The luigid resource the registry tasks hold: one for every task that registers or promotes
a version of one registered model in one store, whatever credentials a worker reaches the store
with, and none of those credentials in its name (luigid shows it to everyone)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import luigi
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import PromoteModel, PromoteRegisteredModel, RegisterModel

USERINFO = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=", min_size=10, max_size=20)
NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True).filter(lambda n: ".." not in n)


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    config = luigi.configuration.get_config()
    config.set("mlflow", "tracking_uri", uri)
    luigi.task_register.Register.clear_instance_cache()
    try:
        yield
    finally:
        config.remove_option("mlflow", "tracking_uri")
        luigi.task_register.Register.clear_instance_cache()


def resources_of(name: str) -> list[dict[str, int]]:
    return [RegisterModel(model_path="m", registered_model=name).resources,
            PromoteRegisteredModel(model_path="other", registered_model=name, eval_file="e.npz").resources,
            PromoteModel(registered_model=name).resources]


@settings(max_examples=60, deadline=None)
@given(name=NAME, user=USERINFO, password=USERINFO)
def test_every_registry_task_of_one_model_and_store_holds_one_resource_whatever_the_credentials(name, user,
                                                                                                  password):
    with tracking_uri("https://mlflow.example:5000"):
        plain = resources_of(name)
    with tracking_uri(f"https://{user}:{password}@mlflow.example:5000"):
        with_credentials = resources_of(name)
    assert plain == with_credentials == [plain[0]] * 3
    [(resource, count)] = plain[0].items()
    assert count == 1 and name in resource and password not in resource.removeprefix(f"vectorai-registry-{name}")


@given(name=NAME, other=NAME)
@settings(max_examples=30, deadline=None)
def test_another_model_or_another_store_is_another_resource(name, other):
    with tracking_uri("https://mlflow.example:5000"):
        first, renamed = resources_of(name)[0], resources_of(other)[0]
    with tracking_uri("https://mlflow.example:5001"):
        elsewhere = resources_of(name)[0]
    assert (first == renamed) == (name == other)
    assert first != elsewhere
