"""Parley reference client: protocol core (crypto), local state, API and the `parley` CLI."""
