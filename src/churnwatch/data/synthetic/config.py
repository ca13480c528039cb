"""The generator's knobs (docs/SYNTHETIC.md): population, everyday behaviour, the churn mechanisms and the
items customers buy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator. Rates are per customer; durations in days (see docs/SYNTHETIC.md)."""

    # --- population -------------------------------------------------------------------------------
    signup_lookback_days: int = 3 * 365
    """Earliest signup is this many days before ``start``."""
    signup_last_gap_days: int = 90
    """Latest signup is this many days before ``end``."""
    region_p: tuple[float, ...] = (0.22, 0.2, 0.18, 0.2, 0.2)
    age_p: tuple[float, ...] = (0.12, 0.22, 0.22, 0.18, 0.14, 0.12)

    # --- everyday behaviour ---------------------------------------------------------------------------
    purchase_rate_median_per_week: float = 0.2
    purchase_rate_sigma: float = 0.85
    """Lognormal spread of the purchase rate between customers (heavy right tail)."""
    visit_ratio: tuple[float, float] = (1.0, 2.0)
    """Visits per purchase, uniform per customer."""
    season_amp_gamma: tuple[float, float] = (2.0, 0.4)
    """Gamma(shape, scale) amplitude of the December peak: intensity is (1 + amp) at the peak."""
    december_peak_doy: int = 349
    december_peak_sd_days: float = 12.0
    basket_median_by_income: tuple[float, float, float] = (28.0, 42.0, 65.0)
    basket_sigma: float = 0.35
    """Lognormal spread of the customer basket mean."""
    basket_noise_sigma: float = 0.5
    """Lognormal noise of a single purchase around the customer's basket mean."""
    category_concentration: float = 2.5
    survey_period_days: tuple[float, float] = (60.0, 120.0)
    survey_response_prob: float = 0.8
    post_contact_survey_prob: float = 0.3
    satisfaction_mean: float = 7.3
    satisfaction_sd: float = 1.2
    satisfaction_noise_sd: float = 0.9
    info_contacts_per_year: float = 1.5
    complaints_per_year: float = 0.7
    complaint_resolve_prob: float = 0.8
    complaint_resolve_mean_days: float = 2.5
    complaint_recur_prob: float = 0.25
    """A resolved complaint comes back as a new complaint 1 + Exp(mean) days after the resolution."""
    complaint_recur_mean_days: float = 10.0
    recurrence_resolve_prob: float = 0.5
    recurrence_churn_boost: float = 1.4
    """Multiplies the chance that an unresolved complaint makes the customer leave, for a recurrence."""
    pauses_per_year: float = 0.5
    pause_days: tuple[float, float] = (20.0, 50.0)
    pause_activity: float = 0.08
    post_pause_complaint_prob: float = 0.25
    competitor_offers_per_year: float = 1.2

    # --- churn mechanisms ---------------------------------------------------------------------------
    disengagement_per_year: float = 0.3
    disengagement_window_days: tuple[float, float] = (45.0, 120.0)
    disengagement_floor: float = 0.15
    disengagement_basket_floor: float = 0.5
    category_shift_per_year: float = 0.12
    category_shift_window_days: tuple[float, float] = (60.0, 120.0)
    category_shift_max_share: float = 0.8
    category_shift_clearance_share: float = 0.6
    category_shift_activity: float = 0.7
    low_satisfaction_per_year: float = 0.13
    low_satisfaction_window_days: tuple[float, float] = (90.0, 150.0)
    low_satisfaction_drop: float = 3.5
    low_satisfaction_contact_boost: float = 2.5
    low_satisfaction_activity: float = 0.75
    unresolved_churn_prob: float = 0.6
    unresolved_delay_days: float = 3.0
    unresolved_mean_days: float = 21.0
    unresolved_activity: float = 0.08
    unresolved_satisfaction_drop: float = 1.5
    price_rise_every_days: float = 180.0
    """Each region gets a rise this often; regions are staggered so every ~36 days some region does."""
    price_rise_delta: tuple[float, float] = (0.05, 0.15)
    price_sensitivity_beta: tuple[float, float] = (1.3, 5.0)
    price_reaction_scale: float = 0.42
    """P(react to a rise) = 1 - exp(-scale * sensitivity * delta * 10)."""
    price_churn_mean_days: float = 30.0
    price_activity: float = 0.35
    competitor_churn_prob: float = 0.13
    competitor_churn_mean_days: float = 20.0
    competitor_activity: float = 0.5
    short_tenure_prob_by_age: tuple[float, ...] = (0.32, 0.24, 0.17, 0.13, 0.1, 0.08)
    short_tenure_mean_days: float = 45.0
    final_decline_days: float = 30.0
    final_decline: float = 0.3
    final_satisfaction_drop: float = 0.7

    # --- items (docs/SYNTHETIC.md "Items and tastes"; drawn after everything else) ---------------------
    n_items: int = 400
    """Catalogue size, spread evenly over the categories; 0: no items (the log without item columns)."""
    item_popularity_zipf: float = 1.0
    """Global popularity of the item of popularity rank r is proportional to r ** -zipf."""
    n_taste_clusters: int = 10
    """Customers fall into this many taste clusters, each with its own preferred items."""
    taste_concentration: float = 0.1
    """Dirichlet concentration per item of a cluster's taste within a category: small = a few favourites."""
    staples_per_customer: int = 3
    """Personal repeat-buy items per customer, drawn from the cluster's taste (categories by preference)."""
    staple_share: float = 0.4
    """Chance that a purchase in a category holding one of the customer's staples is a staple."""
    taste_share: float = 0.6
    """Otherwise the item comes from the cluster's taste with this chance, else from global popularity."""
