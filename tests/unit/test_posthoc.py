"""Post-hoc baselines: every pytorch-ood detector fits on ID train features and scores each representation."""

import numpy as np
import torch
from pytorch_ood.detector import ODIN

from dmr_core.detectors.posthoc import (
    DETECTORS,
    PosthocSettings,
    RowSelection,
    ScoringSet,
    evaluate_detectors,
    fit_detectors,
    score_set,
    score_sets,
    servable_names,
    served_detector,
)
from dmr_core.images import to_float_images
from dmr_core.nets.classifier import build_classifier
from dmr_core.nets.features import extract_features


def test_every_detector_scores_every_representation():
    torch.manual_seed(0)
    model = build_classifier("resnet20").eval()
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, size=(80, 32, 32, 3), dtype=np.uint8)
    train = extract_features(model, train_images, batch_size=40)
    labels = np.arange(80) % 10
    detectors = fit_detectors(model, train, labels, PosthocSettings(vim_dim=8, knn_k=5))
    assert [d.name for d in detectors] == list(DETECTORS)
    assert {d.representation for d in detectors} == {"logits", "penultimate", "feature_map", "images"}
    test_images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    test = extract_features(model, test_images, batch_size=6)
    for det in detectors:
        scores = score_set(det, test, test_images, batch_size=5)
        assert scores.shape == (12,) and np.isfinite(scores).all(), det.name


def test_msp_matches_softmax_definition():
    model = build_classifier("resnet20").eval()
    logits = np.random.default_rng(1).normal(size=(7, 10)).astype(np.float32)
    (msp,) = fit_detectors(model, {"logits": logits}, np.zeros(7), PosthocSettings(), ("MSP",))
    expected = -torch.softmax(torch.from_numpy(logits), 1).max(1).values.numpy()
    np.testing.assert_allclose(score_set(msp, {"logits": logits}, None, 64), expected, rtol=1e-6)


def test_odin_scores_as_pytorch_ood_on_the_plain_classifier():
    """Our ODIN (BN folded, channels-last, on the resolved device) computes pytorch-ood's ODIN of the model."""
    torch.manual_seed(0)
    model = build_classifier("resnet20").eval()
    images = np.random.default_rng(2).integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    settings = PosthocSettings()
    (odin,) = fit_detectors(model, {}, np.zeros(16), settings, ("ODIN",))
    ours = score_set(odin, {}, images, batch_size=8)
    reference = ODIN(model, eps=settings.odin_eps, temperature=settings.odin_temperature)
    expected = reference.predict(to_float_images(torch.from_numpy(images))).detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


def test_score_sets_reads_each_set_once_and_images_only_when_needed():
    model = build_classifier("resnet20").eval()
    rng = np.random.default_rng(3)
    logits = {name: rng.normal(size=(n, 10)).astype(np.float32) for name, n in (("id_test", 20), ("far", 8))}
    detectors = fit_detectors(model, {}, np.zeros(1), PosthocSettings(), ("MSP", "Energy"))

    class Unreadable:
        def __getitem__(self, key):
            raise AssertionError("images were read though no detector scores images")

    sets = {name: ScoringSet({"logits": values}, Unreadable()) for name, values in logits.items()}
    sets["reference"] = ScoringSet({"logits": logits["id_test"][[1, 3]]}, RowSelection(Unreadable(), np.array([1])))
    scores, seconds = score_sets(detectors, sets, batch_size=4)
    assert set(scores) == set(seconds) == {"MSP", "Energy"} and list(scores["MSP"]) == ["id_test", "far", "reference"]
    np.testing.assert_array_equal(scores["MSP"]["reference"], scores["MSP"]["id_test"][[1, 3]])
    results = evaluate_detectors(scores, ["far"])
    assert list(results["Energy"]) == ["far", "mean"]


def test_row_selection_reads_the_chosen_rows():
    np.testing.assert_array_equal(RowSelection(np.arange(10) * 2, np.array([7, 2]))[:], [14, 4])


def test_servable_detectors_rebuilt_from_stored_state_score_as_pytorch_ood_fitted_them():
    """What stage combine stores and serving rebuilds (KNN's reference vectors; nothing for the logit scores) gives
    pytorch-ood's own scores: KNN within 1e-5 in distance (a matrix product instead of scikit-learn's search)."""
    torch.manual_seed(1)
    model = build_classifier("resnet20").eval()
    rng = np.random.default_rng(1)
    train = extract_features(model, rng.integers(0, 256, size=(120, 32, 32, 3), dtype=np.uint8))
    test = extract_features(model, rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8))
    settings = PosthocSettings(knn_k=7)
    assert set(servable_names()) >= {"KNN", "MSP", "Energy"}
    for name in servable_names():
        (fitted,) = fit_detectors(model, train, np.arange(120) % 10, settings, (name,))
        spec = DETECTORS[name]
        state = spec.servable.state({spec.representation: train[spec.representation]}, settings)
        served = served_detector(name, state, settings)
        np.testing.assert_allclose(score_set(served, test, None), score_set(fitted, test, None), rtol=1e-6,
                                   atol=1e-5, err_msg=name)
