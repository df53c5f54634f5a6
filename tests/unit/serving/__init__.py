"""Unit tests of the gateway's serving/ folder."""
