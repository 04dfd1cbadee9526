"""``make bench``: this project beside a tutorial-style FastAPI app and the forward limit."""
