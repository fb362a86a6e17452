"""Tests of the shared (Redis) backend."""
