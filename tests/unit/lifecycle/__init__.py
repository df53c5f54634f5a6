"""Unit tests of the gateway's lifecycle/ folder."""
