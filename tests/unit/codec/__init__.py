"""Unit tests of the gateway's codec/ folder."""
