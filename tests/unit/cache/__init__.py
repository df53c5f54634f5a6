"""Unit tests of the gateway's cache/ folder."""
