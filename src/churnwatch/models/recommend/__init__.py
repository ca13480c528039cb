"""Next-best offers: recommenders learned from purchase histories (one model per file on `Recommender`,
by name in registry.py), their scripted ranker, and the backtest that judges them (docs/RECOMMENDATIONS.md).
Scoring imports only offers.py and ranker.py: neither needs scipy or the fitting libraries."""
