"""Synthetic credit-style data for the demo model: features, a default label, group attributes.

Seeded and pure numpy, so the training script and the tests get identical tables.
The label depends on the features through a logistic model with interactions, so a
depth-3 tree ensemble learns something non-trivial. `gender` is not a model input,
but income is drawn slightly lower for one group, so decisions differ by group the
way real ones do and the group dashboards have something to show. `age` *is* a
model input; `age_band` is derived from it (the demo deliberately shows a group
attribute derived from a feature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FEATURE_NAMES: tuple[str, ...] = (
    "age",
    "income",
    "debt_to_income",
    "credit_history_months",
    "num_late_payments",
    "loan_amount",
    "employment_years",
    "utilization",
    "num_open_accounts",
    "recent_inquiries",
)
"""Model inputs, in the model's column order. `income` and `loan_amount` are in thousands."""

CLASS_LABELS: tuple[str, ...] = ("repaid", "default")
"""Class 1 (`default`) is the positive class whose probability the model reports."""

GROUP_ATTRIBUTES: tuple[str, ...] = ("gender", "age_band")
"""Recorded with decisions, never sent to the model (`age_band` is derived from `age`)."""

AGE_BANDS: tuple[tuple[int, int], ...] = ((18, 29), (30, 39), (40, 49), (50, 59), (60, 120))

# Features with gaps, and how often: real bureau data has holes, and the model must
# take NaN natively (the ensemble learns a default direction per split).
_MISSING_RATES: dict[str, float] = {"employment_years": 0.06, "utilization": 0.04}


@dataclass(frozen=True, slots=True)
class CreditData:
    """A generated table: `features` is float32 [N, F] in `FEATURE_NAMES` order."""

    features: npt.NDArray[np.float32]
    label: npt.NDArray[np.int64]
    gender: list[str]
    age_band: list[str]


def age_band(age: float) -> str:
    """The band label for an age, e.g. 34 -> "30-39"; the oldest band is "60+"."""
    for lo, hi in AGE_BANDS:
        if lo <= age <= hi:
            return f"{lo}+" if hi >= 120 else f"{lo}-{hi}"
    raise ValueError(f"age {age} is outside {AGE_BANDS[0][0]}..{AGE_BANDS[-1][1]}")


def generate(n: int, seed: int = 7) -> CreditData:
    """Draw `n` applicants deterministically from `seed`."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    gender = rng.choice(np.array(["F", "M"]), size=n, p=[0.48, 0.52])
    is_f = gender == "F"
    age = np.clip(rng.gamma(shape=3.5, scale=6.5, size=n) + 18.0, 18.0, 85.0).round()
    # Income rises with age until the fifties; the group gap is deliberate (see module doc).
    peak = 1.0 - ((age - 52.0) / 40.0) ** 2
    income = np.exp(rng.normal(3.7 + 0.45 * peak - 0.12 * is_f, 0.45)).round(1)
    debt_to_income = np.clip(rng.beta(2.2, 5.0, size=n) * 1.2, 0.0, 1.5).round(3)
    credit_history_months = np.clip(
        (age - 18.0) * 12.0 * rng.uniform(0.3, 1.0, size=n), 0.0, None
    ).round()
    late_rate = 0.4 + 1.6 * debt_to_income
    num_late_payments = rng.poisson(late_rate).astype(np.float64)
    loan_amount = np.clip(
        rng.lognormal(2.6, 0.7, size=n) * (0.5 + income / 80.0), 1.0, 500.0
    ).round(1)
    employment_years = np.minimum(rng.exponential(6.0, size=n), age - 18.0).round(1)
    utilization = np.clip(
        rng.beta(2.0, 3.5, size=n) + 0.25 * debt_to_income + 0.05 * num_late_payments, 0.0, 1.0
    ).round(3)
    num_open_accounts = rng.poisson(2.0 + credit_history_months / 60.0).astype(np.float64)
    recent_inquiries = rng.poisson(0.6 + 0.8 * (utilization > 0.7)).astype(np.float64)

    loan_to_income = loan_amount / np.maximum(income, 1.0)
    logit = (
        -1.7
        + 3.0 * (debt_to_income - 0.35)
        + 0.55 * num_late_payments
        + 2.2 * np.maximum(utilization - 0.5, 0.0)
        + 1.4 * np.log1p(loan_to_income)
        - 0.25 * np.sqrt(credit_history_months / 12.0)
        - 0.07 * np.minimum(employment_years, 10.0)
        + 0.25 * recent_inquiries
        - 0.01 * (age - 40.0)
        # An interaction: late payments hurt more when there is little history to offset them.
        + 0.4 * num_late_payments * (credit_history_months < 36)
    )
    label = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    columns = {
        "age": age,
        "income": income,
        "debt_to_income": debt_to_income,
        "credit_history_months": credit_history_months,
        "num_late_payments": num_late_payments,
        "loan_amount": loan_amount,
        "employment_years": employment_years,
        "utilization": utilization,
        "num_open_accounts": num_open_accounts,
        "recent_inquiries": recent_inquiries,
    }
    # Gaps are punched after the label is drawn: the truth did not depend on them being missing.
    for name, rate in _MISSING_RATES.items():
        columns[name] = np.where(rng.uniform(size=n) < rate, np.nan, columns[name])
    features = np.column_stack([columns[f] for f in FEATURE_NAMES]).astype(np.float32)
    return CreditData(
        features=features,
        label=label,
        gender=[str(g) for g in gender],
        age_band=[age_band(float(a)) for a in age],
    )
