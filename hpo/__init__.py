"""Ray Tune + Optuna studies of HyperMAML vs MAML."""
