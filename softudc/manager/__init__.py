"""The manager: desired state, placement plans, and the API administrators and gatekeepers use."""
