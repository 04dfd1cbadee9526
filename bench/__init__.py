"""``make bench``: this project beside a tutorial-style FastAPI app and the forward limit."""

# NOTE: ``tiny`` is HTTP-bound, ``medium`` compute-bound; the peer harness serves the same two.
MODELS = {"tiny": [64, 128, 10], "medium": [512, 2048, 2048, 512]}
MAX_BATCH = 16
