"""Point-cloud classification on ModelNet10/40 (and a synthetic stand-in)."""
