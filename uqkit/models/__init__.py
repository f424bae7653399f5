"""Priors, likelihoods and model specifications."""
