"""Shared fixtures live in tests/fixtures/: real servers, started on free loopback ports."""

pytest_plugins = ["fixtures.nats_servers", "fixtures.postgres"]
