"""Ursa: image classifiers from web image URL lists, trained, registered and served."""
