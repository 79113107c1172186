"""Helpers shared by the fault, partition, security and hostile-input integration tests."""
