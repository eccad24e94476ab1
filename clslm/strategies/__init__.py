"""Strategies: each teaches a model documents in its own way, behind clslm.strategies.base.Strategy."""
