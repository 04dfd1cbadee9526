"""Build-time scripts: training the example weights, generating the gRPC modules."""
