"""HTTP layer: routes, auth, body parsing and problem+json errors."""
