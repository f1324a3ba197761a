"""What the tests drive the product with and that ships beside it: an in-memory driver that
keeps the seam's promises (fake.py). No product module imports this package (import-linter)."""
