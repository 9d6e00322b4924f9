"""The farm descriptor: what admins write (YAML), validated with positions in every error."""
