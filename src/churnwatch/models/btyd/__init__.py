"""BTYD ("buy till you die") models: label-free yardsticks for churn and forecasts of customer demand.

From each customer's purchase history alone (repeat occasions x, time of the last one tx, time since the
first one T) they give P(alive), the probability of no purchase within a horizon and the expected number
of purchases in it; the Gamma-Gamma model adds the expected spend per purchase. No maintained BTYD library
installs cleanly (lifetimes is archived, pymc-marketing is far too heavy), so the published likelihoods are
implemented here with numpy and scipy and fitted by maximum likelihood, one model per module:

- bgnbd: BG/NBD (Fader, Hardie & Lee 2005)
- pareto_nbd: Pareto/NBD (Schmittlein, Morrison & Colombo 1987; Fader & Hardie 2005)
- gamma_gamma: Gamma-Gamma spend (Fader, Hardie & Lee 2005; Fader & Hardie 2013)
- classifier: `BTYDClassifier`, the `model=btyd` churn baseline on the aggregate features
- base: what they share (input checks, the log-parameter maximum-likelihood fit)
"""

from churnwatch.models.btyd.base import BTYDModel
from churnwatch.models.btyd.bgnbd import (
    BGNBD,
    BGNBDParams,
    bgnbd_expected_purchases,
    bgnbd_log_likelihood,
    bgnbd_prob_alive,
    fit_bgnbd,
    prob_no_purchase,
)
from churnwatch.models.btyd.classifier import (
    FIRST_PURCHASE,
    MODELS,
    OCCASIONS,
    RECENCY,
    BTYDClassifier,
    make_model,
    purchase_histories,
)
from churnwatch.models.btyd.gamma_gamma import (
    GammaGamma,
    GammaGammaParams,
    gamma_gamma_expected_spend,
    gamma_gamma_log_likelihood,
    gamma_gamma_mean_spend,
)
from churnwatch.models.btyd.pareto_nbd import (
    ParetoNBD,
    ParetoNBDParams,
    fit_pareto_nbd,
    pareto_nbd_expected_purchases,
    pareto_nbd_log_likelihood,
    pareto_nbd_prob_alive,
    pareto_nbd_prob_no_purchase,
)

__all__ = [
    "BGNBD",
    "FIRST_PURCHASE",
    "MODELS",
    "OCCASIONS",
    "RECENCY",
    "BGNBDParams",
    "BTYDClassifier",
    "BTYDModel",
    "GammaGamma",
    "GammaGammaParams",
    "ParetoNBD",
    "ParetoNBDParams",
    "bgnbd_expected_purchases",
    "bgnbd_log_likelihood",
    "bgnbd_prob_alive",
    "fit_bgnbd",
    "fit_pareto_nbd",
    "gamma_gamma_expected_spend",
    "gamma_gamma_log_likelihood",
    "gamma_gamma_mean_spend",
    "make_model",
    "pareto_nbd_expected_purchases",
    "pareto_nbd_log_likelihood",
    "pareto_nbd_prob_alive",
    "pareto_nbd_prob_no_purchase",
    "prob_no_purchase",
    "purchase_histories",
]
