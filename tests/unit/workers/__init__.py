"""Unit tests of workers/."""
