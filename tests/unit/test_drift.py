"""Calibration (``vectorai.calibration``), the drift test (``vectorai.drift``) and a run's windows
(``vectorai.predict.drift``), on outputs made here: softmax of seeded random logits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorai.calibration import apply_temperature, expected_calibration_error, fit_temperature
from vectorai.drift import OutputSummary, drift_test, summarise
from vectorai.predict.drift import DriftMonitor


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def model_outputs(count: int, seed: int, classes: int = 10, sharpness: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """A model's logits for ``count`` images and labels drawn from softmax(logits): a
    calibrated model's outputs and what it is right about."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (count, classes))
    logits[np.arange(count), rng.integers(0, classes, count)] += sharpness
    labels = np.array([rng.choice(classes, p=p) for p in softmax(logits)])
    return logits, labels


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(2, 12), st.floats(0.05, 20.0), st.integers(0, 2**32 - 1))
def test_a_temperature_keeps_every_top_class_and_gives_probabilities(rows, classes, temperature, seed):
    rng = np.random.default_rng(seed)
    probabilities = softmax(rng.normal(0.0, 8.0, (rows, classes))).astype(np.float32)
    calibrated = apply_temperature(probabilities, temperature)
    assert calibrated.dtype == np.float32 and np.isfinite(calibrated).all()
    assert np.allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    clear = np.sort(probabilities, axis=1)[:, -1] > np.sort(probabilities, axis=1)[:, -2] * 1.001
    assert (calibrated.argmax(axis=1) == probabilities.argmax(axis=1))[clear].all()


@pytest.mark.parametrize("true_temperature", [0.6, 1.0, 2.5])
def test_the_fitted_temperature_undoes_an_over_or_under_confident_model(true_temperature):
    """Labels drawn from softmax(z); the model says softmax(z * T): fitting recovers T, and the
    calibrated outputs' ECE falls to sampling noise."""
    logits, labels = model_outputs(4000, seed=3)
    said = softmax(logits * true_temperature)
    fitted = fit_temperature(said, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.08)
    assert expected_calibration_error(apply_temperature(said, fitted), labels) < 0.02
    if true_temperature != 1.0:
        assert expected_calibration_error(said, labels) > 0.04


def test_the_expected_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    probabilities = np.array([[0.9, 0.1]] * 10 + [[0.3, 0.7]] * 10)
    labels = np.array([0] * 9 + [1] + [1] * 5 + [0] * 5)  # 90 % right at 0.9, 50 % right at 0.7
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.0 + 0.5 * 0.2)


def test_a_summary_survives_json_and_stays_small():
    logits, _ = model_outputs(750, seed=1)
    summary = summarise(softmax(logits), "validation split")
    again = OutputSummary.from_json(summary.to_json())
    assert again == summary and sum(again.class_counts) == sum(again.confidence_counts) == 750
    assert len(summary.to_json()) < 1000


def test_the_same_distribution_is_not_flagged_and_a_changed_class_mix_or_confidence_is():
    logits, _ = model_outputs(2000, seed=5)
    reference = summarise(softmax(logits[:750]))
    same = drift_test(summarise(softmax(logits[750:950])), reference)
    assert not same.drifted and same.p_value > 0.01
    one_class = logits[750:950].copy()
    one_class[:, 3] += 10.0
    assert drift_test(summarise(softmax(one_class)), reference).drifted
    unsure = drift_test(summarise(softmax(logits[750:950] / 4.0)), reference)
    assert unsure.drifted and unsure.distances["confidence"] > 0.5
    too_few = drift_test(summarise(softmax(one_class[:10])), reference)
    assert too_few.p_value is None and not too_few.drifted


def test_false_alarms_stay_near_the_threshold():
    """200 streams of 200 from the reference's own distribution: about 1 % flagged at 0.01."""
    logits, _ = model_outputs(750 + 200 * 200, seed=8)
    probabilities = softmax(logits)
    reference = summarise(probabilities[:750])
    flagged = sum(drift_test(summarise(probabilities[750 + 200 * i:950 + 200 * i]), reference).drifted
                  for i in range(200))
    assert flagged <= 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 300), min_size=1, max_size=12), st.integers(1, 250))
def test_windows_have_exactly_window_images_however_batches_fall(batches, window):
    logits, labels = model_outputs(sum(batches), seed=2)
    probabilities = softmax(logits)
    monitor = DriftMonitor(summarise(probabilities), 10, window=window)
    start = 0
    for size in batches:
        rows = [{"true_label": int(label)} for label in labels[start:start + size]]
        monitor.add(probabilities[start:start + size], rows)
        start += size
    drift = monitor.finish()
    sizes = [w["images"] for w in drift["windows"]]
    full, rest = divmod(sum(batches), window)
    expected = [window] * full + ([rest] if rest >= 30 or (rest and not full) else [])
    assert sizes == expected[-100:]
    assert [w["first"] for w in drift["windows"]] == [window * i for i in range(len(expected))][-100:]
    assert drift["images"] == sum(batches)
    if sum(batches):
        accuracy = float((probabilities.argmax(axis=1) == labels).mean())
        assert drift["measured_accuracy"] == pytest.approx(accuracy, abs=1e-4)
        assert drift["estimated_accuracy"] == pytest.approx(float(probabilities.max(axis=1).mean()), abs=1e-4)


def test_a_model_without_a_reference_still_gets_its_estimate_and_says_why_there_is_no_test():
    logits, _ = model_outputs(100, seed=4)
    monitor = DriftMonitor(None, 10, window=40)
    monitor.add(softmax(logits), [{"true_label": None}] * 100)
    drift = monitor.finish()
    assert drift["drifted"] is False and drift["p_value"] is None and drift["measured_accuracy"] is None
    assert drift["estimated_accuracy"] is not None and "no reference" in drift["note"]


def _with_metadata(path, values: dict[str, str]):
    import onnx

    from vectorai import onnx_metadata

    model = onnx.load(str(path))
    onnx_metadata.set_metadata(model, values)
    onnx.save(model, str(path))
    return path


def test_a_stored_temperature_divides_the_model_s_logits_and_a_bad_one_is_refused(tmp_path):
    from tests.unit.helpers import tiny_onnx_model
    from vectorai import onnx_metadata
    from vectorai.errors import ModelError
    from vectorai.inference import OnnxClassifier

    path = tmp_path / "tiny.onnx"
    weights = tiny_onnx_model(path, classes=4)
    images = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    logits = images.reshape(16, -1) @ weights
    assert OnnxClassifier(path).temperature == 1.0 and OnnxClassifier(path).reference is None
    _with_metadata(path, {onnx_metadata.TEMPERATURE: "2.5"})
    model = OnnxClassifier(path)
    assert model.predict_proba(images) == pytest.approx(softmax(logits / 2.5), abs=1e-5)
    assert model.raw_proba(images) == pytest.approx(softmax(logits), abs=1e-5)
    for bad in ("-1", "nan", "warm"):
        _with_metadata(path, {onnx_metadata.TEMPERATURE: bad})
        with pytest.raises(ModelError, match="temperature|calibration"):
            OnnxClassifier(path)
    _with_metadata(path, {onnx_metadata.TEMPERATURE: "1", onnx_metadata.REFERENCE: "[1, 2"})
    with pytest.raises(ModelError, match="malformed calibration metadata"):
        OnnxClassifier(path)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(60, 5000), min_size=20, max_size=20), st.lists(st.integers(60, 5000), min_size=30,
                                                                           max_size=30))
def test_the_p_value_is_scipy_s_chi_square_test_of_homogeneity_bonferroni_corrected(classes, confidence):
    """With every cell well filled (nothing to merge), the p-value is twice the smaller of
    scipy.stats.chi2_contingency's two, at most 1."""
    from scipy.stats import chi2_contingency

    def summary(class_counts, confidence_counts):
        return OutputSummary(sum(class_counts), list(class_counts), list(confidence_counts), [0.1] * 10)

    stream, reference = summary(classes[:10], confidence[:15]), summary(classes[10:], confidence[15:])
    expected = min(1.0, 2 * min(chi2_contingency([classes[:10], classes[10:]], correction=False).pvalue,
                                chi2_contingency([confidence[:15], confidence[15:]], correction=False).pvalue))
    assert drift_test(stream, reference).p_value == pytest.approx(expected, rel=1e-6, abs=1e-300)
