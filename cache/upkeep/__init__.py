"""Keeping the store sound and within bounds: gc, prune, the standing policy, index rebuilds, stats."""
