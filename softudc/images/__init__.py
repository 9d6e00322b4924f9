"""Images you can see into (Mirage): manifests over a shared content store, imported, built,
materialized, inspected, compared, searched and patched without booting (docs/images.md)."""
