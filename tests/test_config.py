from pathlib import Path

import pytest

from modelyard.config import Policy, Settings, load_policy, policy_from_dict
from modelyard.errors import ConfigError


def test_default_policy_documents_safe_defaults() -> None:
    p = load_policy(None)
    assert p.threshold("quality.max_accuracy_drop_points") == 1.0
    assert p.threshold("quality.max_flip_rate") == 0.02
    assert p.threshold("quality.max_ece_increase") == 0.02
    assert p.threshold("quality.min_cosine_p5") == 0.98
    assert p.threshold("budgets.max_size_mb") is None
    assert p.fidelity_floors()["agreement_min"] == pytest.approx(0.98)


def test_edge_preset_has_tight_budgets() -> None:
    p = load_policy("edge")
    assert p.threshold("budgets.max_size_mb") == 5.0 and p.threshold("budgets.max_peak_rss_mb") == 400.0
    assert p.objective.minimize == "size"


def test_policy_file_merges_with_defaults(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[quality]\nmax_flip_rate = 0.05\n[budgets]\nmax_latency_p99_ms = 10\n")
    p = load_policy(f)
    assert p.threshold("quality.max_flip_rate") == 0.05
    assert p.threshold("quality.max_accuracy_drop_points") == 1.0
    assert p.threshold("budgets.max_latency_p99_ms") == 10.0
    assert p.to_dict()["quality"]["max_flip_rate"] == 0.05
    assert p.name == "p"


def test_unknown_key_and_bad_value_are_reported_together(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[quality]\nmax_flips = 0.1\nmax_flip_rate = "lots"\n')
    with pytest.raises(
        ConfigError, match=r"unknown key 'max_flips' in \[quality\].*max_flip_rate must be a number"
    ):
        load_policy(f)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"quality": {"max_flip_rate": 1.5}}, r"fraction and must be in \[0, 1\]"),
        ({"quality": {"max_accuracy_drop_points": -1}}, r"finite number >= 0"),
        ({"objective": {"minimize": "vibes"}}, r"must be one of cost, latency, size"),
        ({"qualty": {}}, r"unknown policy section 'qualty'"),
        ({"waive": "all"}, r"waive must be a list"),
        ({"robustness": {"pgd_steps": 2.5}}, r"pgd_steps must be a whole number"),
        ({"budgets": {"max_size_mb": "big"}}, r"\[budgets\] max_size_mb must be a number"),
    ],
)
def test_bad_policies(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        policy_from_dict(raw)


def test_not_toml(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("[quality\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(f)


def test_missing_policy_file() -> None:
    with pytest.raises(ConfigError, match="neither a preset"):
        load_policy("no/such/policy.toml")


def test_settings_read_env_once() -> None:
    s = Settings.from_env(
        {"MODELYARD_HOME": "/tmp/h", "MODELYARD_THREADS": "3", "MODELYARD_PRICE_USD_PER_HOUR": "0.5"}
    )
    assert s.home == Path("/tmp/h") and s.threads == 3 and s.price_usd_per_hour == 0.5
    with pytest.raises(ConfigError, match="MODELYARD_THREADS must be a positive integer"):
        Settings.from_env({"MODELYARD_THREADS": "zero"})
    assert Settings.from_env({}, home=Path("x")).home == Path("x")


def test_policy_round_trips_to_dict() -> None:
    d = Policy().to_dict()
    assert d["quality"]["max_flip_rate"] == 0.02 and d["waive"] == []


def test_unknown_threshold_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown policy key 'quality\.nope'"):
        Policy().threshold("quality.nope")
