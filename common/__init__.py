"""Shared building blocks of the three Cdiscount solutions (data layer, folds, images, ...)."""
