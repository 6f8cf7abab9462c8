"""Tiny offline OpenCLIP model trained on synthetic coloured shapes, for tests."""
