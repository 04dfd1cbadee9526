"""The peers' server code, each run from its own venv by ``bench.peers.run``.

Configured as the published table was measured: one process (or one worker) per peer,
torch's default intra-op threads, batching peers at 16 rows / 2 ms.
"""
