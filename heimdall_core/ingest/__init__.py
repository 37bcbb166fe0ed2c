"""Heimdall."""
