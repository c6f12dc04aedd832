from __future__ import annotations

import numpy as np
import pytest

from sidecar.demo.data import AGE_BANDS, FEATURE_NAMES, age_band, generate


def test_same_seed_same_table_other_seed_other_table() -> None:
    a, b, c = generate(500, seed=3), generate(500, seed=3), generate(500, seed=4)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.gender == b.gender and a.age_band == b.age_band
    assert not np.array_equal(np.nan_to_num(a.features), np.nan_to_num(c.features))


def test_shape_labels_missing_values_and_groups() -> None:
    d = generate(5000, seed=1)
    assert d.features.shape == (5000, len(FEATURE_NAMES))
    assert d.features.dtype == np.float32
    assert 0.1 < d.label.mean() < 0.4
    missing = np.isnan(d.features).mean(axis=0)
    gappy = {FEATURE_NAMES[i] for i in np.flatnonzero(missing)}
    assert gappy == {"employment_years", "utilization"}
    assert set(d.gender) == {"F", "M"}
    ages = d.features[:, FEATURE_NAMES.index("age")]
    assert d.age_band == [age_band(float(a)) for a in ages]
    assert len(set(d.age_band)) == len(AGE_BANDS)


def test_the_label_depends_on_the_features() -> None:
    d = generate(5000, seed=2)
    late = d.features[:, FEATURE_NAMES.index("num_late_payments")]
    assert d.label[late >= 3].mean() > d.label[late == 0].mean() + 0.15


@pytest.mark.parametrize(
    ("age", "band"), [(18, "18-29"), (29, "18-29"), (30, "30-39"), (59, "50-59"), (85, "60+")]
)
def test_age_band(age: float, band: str) -> None:
    assert age_band(age) == band


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate(0)
    with pytest.raises(ValueError, match="outside"):
        age_band(12)
