"""Data loaders: UCI standard splits, scikit-learn bundled sets, synthetic data."""
