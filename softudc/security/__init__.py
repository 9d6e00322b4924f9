"""Keys and replay protection shared by the gatekeeper's ESP and VARP authentication."""
