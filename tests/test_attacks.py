"""FGSM and PGD against ART as the oracle, projection and hygiene invariants, and the default budgets."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.attacks import default_epsilon, fgsm, perturbation_stats, pgd
from tests.helpers.models import make_blobs

EPS = 0.1


def _accuracy(module, x: np.ndarray, y: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        return float(np.mean(module(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy() == y))


@pytest.fixture(scope="module")
def digits_attack(digits):  # type: ignore[no-untyped-def]
    module = digits.baseline.torch_module()
    x, y = digits.dataset.x_test, digits.dataset.y_test
    return module, x, y


@pytest.fixture(scope="module")
def art_classifier(digits_attack):  # type: ignore[no-untyped-def]
    import torch
    from art.estimators.classification import PyTorchClassifier

    module, _, _ = digits_attack
    return PyTorchClassifier(
        model=module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


@pytest.fixture
def tiny_mlp():  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_fgsm_matches_art(digits_attack, art_classifier) -> None:  # type: ignore[no-untyped-def]
    from art.attacks.evasion import FastGradientMethod

    module, x, y = digits_attack
    ours = fgsm(module, x, y, epsilon=EPS, value_range=(0.0, 1.0))
    theirs = FastGradientMethod(art_classifier, norm=np.inf, eps=EPS, batch_size=128).generate(x, y=y)
    assert ours.dtype == x.dtype and ours.shape == x.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_pgd_without_random_start_matches_art(digits_attack, art_classifier) -> None:  # type: ignore[no-untyped-def]
    from art.attacks.evasion import ProjectedGradientDescent

    module, x, y = digits_attack
    ours = pgd(module, x, y, epsilon=EPS, value_range=(0.0, 1.0), steps=10, random_start=False)
    attack = ProjectedGradientDescent(
        art_classifier,
        norm=np.inf,
        eps=EPS,
        eps_step=2.5 * EPS / 10,
        max_iter=10,
        num_random_init=0,
        batch_size=128,
        verbose=False,
    )
    theirs = attack.generate(x, y=y)
    assert _accuracy(module, ours, y) == pytest.approx(_accuracy(module, theirs, y), abs=0.02)
    assert np.mean(np.abs(ours - theirs) <= 1e-6) >= 0.99


def test_pgd_is_stronger_than_fgsm_and_stays_in_the_ball(digits_attack) -> None:  # type: ignore[no-untyped-def]
    module, x, y = digits_attack
    x_fgsm = fgsm(module, x, y, epsilon=EPS, value_range=(0.0, 1.0))
    x_pgd = pgd(module, x, y, epsilon=EPS, value_range=(0.0, 1.0), steps=10, seed=0)
    clean, acc_fgsm, acc_pgd = (_accuracy(module, a, y) for a in (x, x_fgsm, x_pgd))
    assert acc_pgd <= acc_fgsm < clean
    for adv in (x_fgsm, x_pgd):
        assert np.abs(adv - x).max() <= EPS + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_default_image_budget_bites_without_erasing_the_digits(digits, digits_attack) -> None:  # type: ignore[no-untyped-def]
    module, x, y = digits_attack
    eps, text = default_epsilon("image", (0.0, 1.0), reference=digits.dataset.x_train)
    assert eps == pytest.approx(0.1) and "under 32 px" in text
    acc = _accuracy(module, pgd(module, x, y, epsilon=eps, value_range=(0.0, 1.0)), y)
    assert 0.1 <= acc <= 0.8


def test_pgd_is_deterministic_and_independent_of_batch_size(digits_attack) -> None:  # type: ignore[no-untyped-def]
    module, x, y = digits_attack
    x, y = x[:64], y[:64]
    a = pgd(module, x, y, epsilon=EPS, value_range=(0.0, 1.0), steps=5, seed=1)
    b = pgd(module, x, y, epsilon=EPS, value_range=(0.0, 1.0), steps=5, seed=1, batch_size=7)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = pgd(module, x, y, epsilon=EPS, value_range=(0.0, 1.0), steps=5, seed=2)
    d = pgd(module, x, y, epsilon=EPS, value_range=(0.0, 1.0), steps=5, random_start=False)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_attacks_keep_no_parameter_grads_and_restore_the_mode(tiny_mlp) -> None:  # type: ignore[no-untyped-def]
    import torch

    x, y = make_blobs(n=30, features=6, classes=3)
    tiny_mlp.train()
    with torch.no_grad():  # the caller's grad mode does not matter
        pgd(tiny_mlp, x, y, epsilon=0.5, value_range=(-20.0, 20.0), steps=3)
        fgsm(tiny_mlp, x, y, epsilon=0.5, value_range=(-20.0, 20.0))
    assert tiny_mlp.training
    assert all(p.grad is None for p in tiny_mlp.parameters())


def test_per_feature_budget_and_range(tiny_mlp) -> None:  # type: ignore[no-untyped-def]
    x, y = make_blobs(n=60, features=6, classes=3)
    ref = x[:40]
    eps, text = default_epsilon("tabular", None, reference=ref)
    assert isinstance(eps, np.ndarray) and eps.shape == (6,) and "standard deviation" in text
    np.testing.assert_allclose(eps, 0.1 * ref.astype(np.float64).std(axis=0))
    lo, hi = ref.min(axis=0), ref.max(axis=0)  # test rows may fall outside the training range
    for adv in (
        fgsm(tiny_mlp, x, y, epsilon=eps, value_range=(lo, hi)),
        pgd(tiny_mlp, x, y, epsilon=eps, value_range=(lo, hi)),
    ):
        delta = np.abs(adv.astype(np.float64) - x)
        assert np.all(delta <= eps + 1e-6)
        assert np.all(adv >= np.minimum(lo, x) - 1e-6) and np.all(adv <= np.maximum(hi, x) + 1e-6)
        assert delta.max() > 0


def test_fgsm_by_hand_on_a_linear_model() -> None:
    import torch

    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    x = np.array([[0.5, 0.5], [0.95, 0.1]], dtype=np.float32)
    # for label 0 the loss grows along (−1, +1): feature 0 goes down, feature 1 up; then clipped to [0, 1]
    adv = fgsm(model, x, np.array([0, 0]), epsilon=0.1, value_range=(0.0, 1.0))
    np.testing.assert_allclose(adv, [[0.4, 0.6], [0.85, 0.2]], atol=1e-6)
    adv_1 = fgsm(model, x, np.array([1, 1]), epsilon=0.1, value_range=(0.0, 1.0))
    np.testing.assert_allclose(adv_1, [[0.6, 0.4], [1.0, 0.0]], atol=1e-6)


def test_default_epsilon_conventions() -> None:
    big = np.zeros((2, 3, 32, 32))
    eps, text = default_epsilon("image", (-1.0, 1.0), reference=big)
    assert eps == pytest.approx(2 * 8 / 255) and "8/255" in text
    eps_no_ref, _ = default_epsilon("image", (0.0, 1.0))
    assert eps_no_ref == pytest.approx(8 / 255)
    ref = np.column_stack([np.arange(10.0), np.full(10, 2.0)])
    eps_tab, _ = default_epsilon("tabular", None, reference=ref)
    np.testing.assert_allclose(eps_tab, [0.1 * np.arange(10.0).std(), 0.0])
    with pytest.raises(ConfigError, match="no gradient attack for modality 'text'"):
        default_epsilon("text", None)
    with pytest.raises(ConfigError, match="needs reference"):
        default_epsilon("tabular", None)


def test_attacks_reject_bad_arguments(tiny_mlp) -> None:  # type: ignore[no-untyped-def]
    x, y = make_blobs(n=10, features=6, classes=3)
    with pytest.raises(DataError, match="x has 10 rows but y has 9 labels"):
        fgsm(tiny_mlp, x, y[:9], epsilon=0.1, value_range=(-9.0, 9.0))
    with pytest.raises(ConfigError, match="epsilon must be >= 0"):
        pgd(tiny_mlp, x, y, epsilon=-0.1, value_range=(-9.0, 9.0))
    with pytest.raises(ConfigError, match="lo <= hi"):
        pgd(tiny_mlp, x, y, epsilon=0.1, value_range=(1.0, 0.0))
    with pytest.raises(ConfigError, match="broadcastable"):
        fgsm(tiny_mlp, x, y, epsilon=np.ones(4), value_range=(-9.0, 9.0))
    with pytest.raises(DataError, match="outputs 3 classes"):
        fgsm(tiny_mlp, x, y + 3, epsilon=0.1, value_range=(-9.0, 9.0))
    with pytest.raises(ConfigError, match="steps"):
        pgd(tiny_mlp, x, y, epsilon=0.1, value_range=(-9.0, 9.0), steps=0)


def test_perturbation_stats_by_hand() -> None:
    x = np.zeros((3, 2))
    adv = np.array([[0.1, 0.0], [0.3, 0.4], [0.0, 0.0]])
    s = perturbation_stats(x, adv, success=[True, True, False])
    assert s == pytest.approx({"n": 2, "linf_max": 0.4, "linf_mean": 0.25, "l2_mean": 0.3, "l2_median": 0.3})
    assert perturbation_stats(x, adv, success=[False] * 3)["l2_mean"] is None
