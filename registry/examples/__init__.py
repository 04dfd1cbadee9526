"""Example architectures named by the repository's ``models.yaml``.

Each factory takes its manifest ``architecture_args`` as keyword arguments. Inputs are
raw data-set values; any scaling lives inside the module (as buffers, saved with the
weights), so clients send what the data set holds and nothing drifts between trainer and
server.
"""
