"""Helpers every test tier shares: a controllable backend server and process harness."""
