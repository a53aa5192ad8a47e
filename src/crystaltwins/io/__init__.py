"""Structure files → records."""
