"""Model cards: our preprocessing against transformers' image processors (the reference), the
three forms of card, and cards that do not fit their graph failing in one line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.foreign_models import COLOURS, VIT_PREPROCESSOR, colour_graph, colour_images, optimum_folder
from vectorai.errors import ModelError
from vectorai.inference import OnnxClassifier
from vectorai.modelcard import ImageProcessing

logging.getLogger("transformers").setLevel(logging.ERROR)  # "PyTorch was not found": it is not needed


# transformers and skl2onnx are dev dependencies (make test installs them): imported where used,
# never skipped.


def reference(config: dict, image: np.ndarray) -> np.ndarray:
    """What transformers computes from ``config`` for one (H, W, C) uint8 image: (C, H, W)."""
    from transformers import BitImageProcessorPil, ConvNextImageProcessorPil, ViTImageProcessorPil

    kind = {"ViTImageProcessor": ViTImageProcessorPil, "ConvNextImageProcessor": ConvNextImageProcessorPil,
            "BitImageProcessor": BitImageProcessorPil}[config["image_processor_type"]]
    out = kind(**config)(image, return_tensors="np", input_data_format="channels_last")
    return out["pixel_values"][0]


means = st.lists(st.floats(0.0, 1.0, width=32), min_size=3, max_size=3)
stds = st.lists(st.floats(0.0625, 1.0, width=32), min_size=3, max_size=3)
edges = st.integers(1, 48)
configs = st.one_of(
    st.fixed_dictionaries({  # ViT: resize to height x width
        "image_processor_type": st.just("ViTImageProcessor"),
        "size": st.fixed_dictionaries({"height": edges, "width": edges}),
        "resample": st.integers(0, 5), "do_rescale": st.booleans(), "do_normalize": st.booleans(),
        "rescale_factor": st.sampled_from([1 / 255, 1 / 127.5, 0.5]), "image_mean": means, "image_std": stds,
        "do_convert_rgb": st.just(True)}),
    st.fixed_dictionaries({  # ConvNeXt (and ResNet's hub configs): shortest edge / crop_pct, crop or warp
        "image_processor_type": st.just("ConvNextImageProcessor"),
        "size": st.fixed_dictionaries({"shortest_edge": st.one_of(edges, st.just(384))}),
        "crop_pct": st.sampled_from([0.875, 0.95, 1.0]), "resample": st.integers(0, 5),
        "do_rescale": st.just(True), "do_normalize": st.just(True), "image_mean": means, "image_std": stds,
        "do_convert_rgb": st.just(True)}),
    st.fixed_dictionaries({  # BiT/CLIP-style: shortest edge, then a centre crop (padded when larger)
        "image_processor_type": st.just("BitImageProcessor"),
        "size": st.fixed_dictionaries({"shortest_edge": edges}),
        "do_center_crop": st.just(True), "crop_size": st.fixed_dictionaries({"height": edges, "width": edges}),
        "resample": st.integers(0, 5), "do_rescale": st.just(True), "do_normalize": st.booleans(),
        "image_mean": means, "image_std": stds, "do_convert_rgb": st.just(True)}),
)


@st.composite
def images(draw) -> np.ndarray:
    height, width = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    channels = draw(st.sampled_from([1, 3, 4]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, image=images())
def test_preprocessing_matches_transformers_image_processors_within_1e_5(config, image):
    """For every processor kind, key value and image shape (grey, RGB, RGBA; smaller or larger
    than the target), from the same decoded pixels."""
    want = reference(config, image)
    got = ImageProcessing.from_config(config).process(image, channels=3)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_a_saved_preprocessor_config_is_read_as_transformers_reads_it(tmp_path):
    """The file as a processor saves it (every key it writes, the type with it), read by both."""
    from transformers import ConvNextImageProcessorPil

    ConvNextImageProcessorPil(size={"shortest_edge": 24}, crop_pct=0.9).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_allclose(ImageProcessing.from_config(config).process(image, 3), reference(config, image),
                               atol=1e-5, rtol=0)


# --- the card and its graph -------------------------------------------------------------------


def probabilities_on_reference(folder, config, images, channel_order="RGB", layout="NCHW"):
    """onnxruntime on transformers' preprocessing: what the stored probabilities must be."""
    import onnxruntime as ort

    batch = np.stack([reference(config, im) for im in images])
    if channel_order == "BGR":
        batch = batch[:, ::-1]
    if layout == "NHWC":
        batch = batch.transpose(0, 2, 3, 1)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch)})[0]


def test_an_optimum_folder_with_bgr_and_logits_gives_softmax_probabilities_and_id2label_names(tmp_path):
    folder = optimum_folder(tmp_path / "m", channel_order="BGR", card={"channel_order": "BGR"})
    model = OnnxClassifier(folder)
    assert model.class_names == COLOURS and model.card.layout == "NCHW" and model.card.input_name == "pixel_values"
    images, labels = colour_images(30)
    probabilities = model.predict_proba(model.preprocess(images))
    logits = probabilities_on_reference(folder, VIT_PREPROCESSOR, images, channel_order="BGR")
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, exp / exp.sum(axis=1, keepdims=True), atol=1e-6)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.95
    # Read as RGB, the same graph gets red and blue the wrong way round.
    (folder / "vectorai.json").unlink()
    as_rgb = OnnxClassifier(folder)
    assert (as_rgb.predict_proba(as_rgb.preprocess(images)).argmax(axis=1) == labels).mean() < 0.7


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "flat"])
@pytest.mark.parametrize("kind", ["probabilities", "logits", "log_probabilities"])
def test_each_layout_and_output_kind_gives_the_same_probabilities(tmp_path, layout, kind):
    folder = tmp_path / "m"
    colour_graph(folder / "net.onnx", layout=layout, output=kind, input_name="x", output_name="y")
    (folder / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    (folder / "vectorai.json").write_text(json.dumps({
        "model": "net.onnx", "layout": layout, "output_kind": kind, "class_names_file": "labels.txt",
        "preprocessor": VIT_PREPROCESSOR}))
    model = OnnxClassifier(folder)
    images, _ = colour_images(12, seed=3)
    got = model.predict_proba(model.preprocess(images))
    assert model.class_names == COLOURS
    optimum = optimum_folder(tmp_path / "ref")  # the same weights as NCHW logits
    logits = probabilities_on_reference(optimum, VIT_PREPROCESSOR, images).astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, exp / exp.sum(axis=1, keepdims=True), atol=1e-5)


def test_a_single_onnx_file_with_vectorai_json_beside_it_in_greyscale(tmp_path):
    colour_graph(tmp_path / "grey.onnx", weights=np.array([[4.0, -4.0]], np.float32), size=(8, 8))
    (tmp_path / "vectorai.json").write_text(json.dumps({
        "model": "grey.onnx", "channel_order": "L", "output_kind": "logits", "class_names": ["light", "dark"],
        "preprocessor": {"size": {"height": 8, "width": 8}, "do_normalize": True, "image_mean": 0.5,
                         "image_std": 0.5}}))
    model = OnnxClassifier(tmp_path / "grey.onnx")
    light, dark = np.full((20, 20, 3), 230, np.uint8), np.full((5, 9), 20, np.uint8)
    assert model.predict_proba(model.preprocess([light, dark])).argmax(axis=1).tolist() == [0, 1]
    assert model.spec.channels == 1 and model.card.input_shape == (1, 8, 8)


def one_line_error(path) -> str:
    with pytest.raises(ModelError) as caught:
        OnnxClassifier(path)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"model {path}: ")
    return text


@pytest.mark.parametrize("graph, card, expected", [
    ({"layout": "NCHW"}, {"layout": "flat"}, "input pixel_values has rank 4 (shape [batch, 3, 32, 32]) but layout "
                                             "flat needs rank 2"),
    ({"layout": "NHWC"}, {"layout": "NCHW"}, "has 32 channels on axis 1 but the card gives 3"),
    ({}, {"channel_order": "L"}, "has 3 channels on axis 1 but the card gives 1 (NCHW L 32x32)"),
    ({"size": (64, 64)}, {}, "has 64 height on axis 2 but the card gives 32"),
    ({}, {"id2label": {"0": "red", "2": "blue"}}, "id2label has no entry for class 1 (the output has 3 classes)"),
    ({"classes": 4}, {}, "id2label has no entry for class 3 (the output has 4 classes)"),
    ({}, {"class_names": ["red", "green"]}, "the output has 3 classes but the card names 2"),
    ({}, {"output": "probs"}, "the graph has no output named 'probs' (it has logits)"),
    ({}, {"layout": "NWHC"}, "layout must be one of NCHW, NHWC, flat, not 'NWHC'"),
    ({}, {"colour_order": "BGR"}, "unknown key 'colour_order'"),
    ({}, {"preprocessor": {"size": {"shortest_edge": 32}}}, "size gives only shortest_edge and there is no "
                                                            "centre crop"),
    ({}, {"preprocessor": {"image_mean": [0.5, 0.5]}}, "image_mean has 2 values but the model takes 3 channels"),
])
def test_a_card_that_does_not_fit_its_graph_is_one_line_naming_the_model_and_the_misfit(tmp_path, graph, card,
                                                                                           expected):
    folder = optimum_folder(tmp_path / "m", card=card, **graph)
    assert expected in one_line_error(folder)


def test_a_model_without_metadata_or_card_and_an_unreadable_card(tmp_path):
    colour_graph(tmp_path / "bare" / "model.onnx")
    assert "no vectorai metadata and no model card" in one_line_error(tmp_path / "bare" / "model.onnx")
    folder = optimum_folder(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    assert "config.json is not readable JSON" in one_line_error(folder)
    (folder / "config.json").write_text("{}")
    assert "no class names" in one_line_error(folder)
    assert "no model.onnx in the folder" in one_line_error(tmp_path)


def test_skl2onnx_zipmap_output_is_refused_with_the_option_that_fixes_it(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).random((30, 12)).astype(np.float32)
    clf = LogisticRegression().fit(x, np.arange(30) % 3)
    (tmp_path / "model.onnx").write_bytes(to_onnx(clf, x[:1]).SerializeToString())
    (tmp_path / "vectorai.json").write_text(json.dumps({
        "layout": "flat", "channel_order": "RGB", "output": "output_probability", "class_names": COLOURS,
        "preprocessor": {"size": {"height": 2, "width": 2}}}))
    assert "export with options={id(model): {'zipmap': False}}" in one_line_error(tmp_path)


def test_the_card_embedded_at_registration_is_the_whole_card(tmp_path):
    from vectorai.modelcard import embed_card

    folder = optimum_folder(tmp_path / "m", channel_order="BGR", card={"channel_order": "BGR"})
    model = OnnxClassifier(folder)
    embed_card(folder, model.card.to_dict(), tmp_path / "alone.onnx")  # no files beside it
    alone = OnnxClassifier(tmp_path / "alone.onnx")
    assert alone.card == model.card
    images, _ = colour_images(6)
    np.testing.assert_array_equal(alone.preprocess(images), model.preprocess(images))


def test_card_keys_given_as_flags_override_the_files(tmp_path):
    """What vectorai-register's --channel-order etc. do: the optimum folder says RGB (no
    vectorai.json); the flag makes it BGR, and only then are the colours right."""
    folder = optimum_folder(tmp_path / "m", channel_order="BGR")
    images, labels = colour_images(30, seed=4)
    for overrides, right in (({}, False), ({"channel_order": "BGR"}, True)):
        model = OnnxClassifier(folder, card_overrides=overrides)
        accuracy = (model.predict_proba(model.preprocess(images)).argmax(axis=1) == labels).mean()
        assert (accuracy >= 0.95) == right, (overrides, accuracy)
    with pytest.raises(ModelError, match="flags: unknown key 'colour'"):
        OnnxClassifier(folder, card_overrides={"colour": "BGR"})
