"""Storage: every SQL statement of the server lives below this package."""
