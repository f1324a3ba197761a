"""JSON Schemas shipped with the package (also reachable as the top-level `schemas/`)."""
