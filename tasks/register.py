"""RegisterModel and PromoteRegisteredModel: a model trained elsewhere, registered and promoted
like our own exports; ``vectorai-register PATH --name NAME`` runs them."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import luigi
from luigi.util import requires

from tasks.common import VectoraiTaskMixin, check_name_part, name_part, registry_resources, write_json
from tasks.config import mlflow, paths, registry
from tasks.live import LiveStatus
from tasks.model import EVAL_FILE_CHOICE, unseen_images

#: The card keys RegisterModel takes as flags, over the card's own files.
_CARD_FLAGS = {"layout": "layout", "channel_order": "channel_order", "output_kind": "output_kind",
               "input_name": "input", "output_name": "output", "class_names_file": "class_names_file"}


class RegisterModel(VectoraiTaskMixin, luigi.Task):
    """Register a foreign ONNX classifier and its card as a new version of a registered model."""

    model_path = luigi.Parameter(description="The model: a Hugging Face optimum folder (model.onnx, config.json, "
                                 "preprocessor_config.json), or a folder or .onnx with vectorai.json beside it")
    registered_model = luigi.Parameter(description="Registered model it becomes a version of")
    layout = luigi.Parameter(default="", description="Card key: NCHW, NHWC or flat; empty: the card's")
    channel_order = luigi.Parameter(default="", description="Card key: RGB, BGR or L; empty: the card's")
    output_kind = luigi.Parameter(default="", description="Card key: probabilities, logits or log_probabilities; "
                                  "empty: the card's")
    input_name = luigi.Parameter(default="", description="Card key: the graph input to feed; empty: the card's")
    output_name = luigi.Parameter(default="", description="Card key: the graph output to read; empty: the card's")
    class_names_file = luigi.Parameter(default="", description="Card key: a text file of class names, one per "
                                       "line; empty: the card's")
    reference_file = luigi.Parameter(default="", description="An .npz (x[, y]) of images the model did not train "
                                     "on (vectorai-register's --eval-file): its outputs there are stored with the "
                                     "version as the drift test's reference; empty: no reference, no drift test")

    @property
    def overrides(self) -> dict[str, str]:
        return {key: getattr(self, flag) for flag, key in _CARD_FLAGS.items() if getattr(self, flag)}

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        return registry_resources(self.registered_model)

    def output(self) -> luigi.LocalTarget:
        from vectorai.modelcard import model_digest

        # Named after what is registered (file contents and flags) and where (the tracking
        # store), so the same model is registered once in each store and a changed one again: a
        # version registered in one store must not stand for another, whose NAME/1 may be
        # anything. output() must not raise: run() reports.
        try:
            digest = model_digest(Path(self.model_path))
        except Exception:  # noqa: BLE001
            digest = "unreadable"
        what = [digest, self.overrides, mlflow().store_identity()]
        key = hashlib.sha256(json.dumps(what + ([self.reference_file] if self.reference_file else []),
                                        sort_keys=True).encode()).hexdigest()[:12]
        return luigi.LocalTarget(paths().models / "registered" / name_part(self.registered_model) / f"{key}.json")

    def run(self) -> None:
        from vectorai.prepare import load_stream_sample
        from vectorai.registry import register_foreign_model

        check_name_part("RegisterModel.registered_model", self.registered_model)
        reference = load_stream_sample(Path(self.reference_file)) if self.reference_file else None
        with LiveStatus(self) as live:
            live.update(f"registering {self.model_path} as {self.registered_model}")
            ref = register_foreign_model(Path(self.model_path), tracking_uri=mlflow().resolved_uri(),
                                         experiment=mlflow().experiment, name=self.registered_model,
                                         artifact_dir=mlflow().artifact_dir, overrides=self.overrides,
                                         reference_images=reference,
                                         reference_source=f"eval file {Path(self.reference_file).name}")
        write_json(self.output(), {"registered_model": ref.name, "version": ref.version, "run_id": ref.run_id,
                                   "uri": ref.uri, "model_path": self.model_path})


@requires(RegisterModel)
class PromoteRegisteredModel(VectoraiTaskMixin, luigi.Task):
    """PromoteModel for a registered foreign model: compare it with the current ``@champion`` on
    a labelled .npz and move the alias when it is at least as good."""

    eval_file = luigi.Parameter(config_path=dict(section="PromoteModel", name="eval_file"), default="",
                                description="An .npz (x, y) to compare the models on")
    min_improvement = luigi.FloatParameter(config_path=dict(section="PromoteModel", name="min_improvement"),
                                           default=0.0, description="Accuracy (0-1) the new version must gain "
                                           "over the champion to replace it")

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        return registry_resources(self.registered_model)

    def output(self) -> luigi.LocalTarget:
        # Beside its registration, which is named for the store too; a decision made in one
        # store must not stand for another.
        key = json.dumps([self.eval_file, self.min_improvement, mlflow().store_identity()])
        name = f"{hashlib.sha256(key.encode()).hexdigest()[:10]}.json"
        registered = Path(self.input().path)
        return luigi.LocalTarget(registered.parent / "promotion" / registered.stem / name)

    def run(self) -> None:
        from vectorai.errors import ConfigError, DatasetError
        from vectorai.prepare import load_stream_sample
        from vectorai.registry import check_export, log_decision, promote_version

        if not self.eval_file:
            raise ConfigError("PromoteModel.eval_file", "a foreign model has no test split; give --eval-file x.npz")
        registered = json.loads(Path(self.input().path).read_text())
        data = load_stream_sample(Path(self.eval_file))
        if (data.labels < 0).any():
            raise DatasetError(self.eval_file, "every image needs a label (y) to compare models")
        tracking_uri = mlflow().resolved_uri()
        name, version = registered["registered_model"], registered["version"]
        # The registration names a version, not a store: make sure this store's version is it
        # (a store made anew at the same address may have another model as that version).
        check_export(name, version, registered["run_id"], tracking_uri, what=f"the registration {self.input().path}",
                     remedy="remove that file to register the model in this store")
        with LiveStatus(self) as live:
            # A champion that is one of our exports recorded what it trained on: those images
            # are left out, as PromoteModel does (a foreign model's training set is unknown).
            record = promote_version(name, version, tracking_uri=tracking_uri, cache_dir=registry().cache,
                                     choose=unseen_images(self, live, name, version, data, tracking_uri=tracking_uri,
                                                          eval_set=self.eval_file),
                                     min_improvement=self.min_improvement, eval_set=self.eval_file)
            record["compared_on"] = {"source": self.eval_file, "chosen": EVAL_FILE_CHOICE, **record.pop("compared")}
            live.update(f"{record['outcome']}: {record['reason']}", 100)
        log_decision(record, tracking_uri=tracking_uri, run_id=registered["run_id"],
                     artifact_file=f"promotion/{Path(self.output().path).name}")
        write_json(self.output(), record)


def main(argv: list[str] | None = None) -> int:
    """``vectorai-register PATH --name NAME [--eval-file x.npz]``: register (and promote)."""
    parser = argparse.ArgumentParser(prog="vectorai-register", description=__doc__)
    parser.add_argument("path", help="optimum folder, or a folder or .onnx with vectorai.json")
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--eval-file", default="", help="also promote it against @champion on this labelled .npz")
    parser.add_argument("--min-improvement", type=float, default=0.0)
    for flag in _CARD_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", default="", help=f"card key {_CARD_FLAGS[flag]}")
    args = parser.parse_args(argv)

    import tasks  # noqa: F401 - installs the one-line error reporting

    # The eval file is also the version's drift reference: images the model did not train on.
    register = RegisterModel(model_path=args.path, registered_model=args.name, reference_file=args.eval_file,
                             **{flag: getattr(args, flag) for flag in _CARD_FLAGS})
    task = register if not args.eval_file else PromoteRegisteredModel(
        model_path=args.path, registered_model=args.name, eval_file=args.eval_file, reference_file=args.eval_file,
        min_improvement=args.min_improvement, **{flag: getattr(args, flag) for flag in _CARD_FLAGS})
    ok = luigi.build([task], local_scheduler=True, log_level="WARNING")
    if not ok:
        return 1
    print(Path(register.output().path).read_text())
    if task is not register:
        print(Path(task.output().path).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
