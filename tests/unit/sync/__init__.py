"""Unit tests of the gateway's sync/ folder."""
