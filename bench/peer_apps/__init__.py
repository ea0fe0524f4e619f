"""The peers' applications, importable by their own consumer/worker commands."""
