"""The MLflow model registry: exported ONNX models as registered versions, ``models:/`` URIs
turned into loaded classifiers, and promotion of a version to the ``champion`` alias.

A registered model is named after its dataset (``vectorai-mnist-sample``); each export is a new
version. ``champion`` is the version that prediction uses; ``previous`` the one it replaced, so
rolling back is moving ``champion`` to it. The registry lives in the MLflow tracking store (the
default SQLite store or a server); nothing here reads configuration, and MLflow is imported only
inside the functions that need it.

- ``names``: registered model names, versions and URIs;
- ``client``: the MLflow calls (resolving, registering, tags);
- ``cache``: the downloaded models, checked against their SHA-256;
- ``promotion``: judging a candidate against ``@champion`` and moving the aliases;
- ``lineage``: what each version trained on;
- ``foreign``: registering a model this chain did not train.
"""

from vectorai.registry.cache import fetch_model, load_classifier
from vectorai.registry.client import (alias_version, call_mlflow, check_export, mlflow_client, register_onnx_model,
                                      resolve, run_version, version_tags)
from vectorai.registry.foreign import register_foreign_model
from vectorai.registry.lineage import TRAINED_ON_ARTIFACT, record_training_set, trained_on, unseen_by_either
from vectorai.registry.names import (CHAMPION, PREVIOUS, SHA256_TAG, ModelVersionRef, check_model_name,
                                     check_version, parse_model_uri)
from vectorai.registry.promotion import ChooseImages, Decision, decide, evaluate, log_decision, promote_version

__all__ = ["CHAMPION", "PREVIOUS", "SHA256_TAG", "TRAINED_ON_ARTIFACT", "ChooseImages", "Decision",
           "ModelVersionRef", "alias_version", "call_mlflow", "check_export", "check_model_name", "check_version",
           "decide", "evaluate", "fetch_model", "load_classifier", "log_decision", "mlflow_client",
           "parse_model_uri", "promote_version", "record_training_set", "register_foreign_model",
           "register_onnx_model", "resolve", "run_version", "trained_on", "unseen_by_either", "version_tags"]
