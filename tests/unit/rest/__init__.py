"""Unit tests of the gateway's rest/ folder."""
