"""Handlers shipped with the server, for models that take text or images.

Name one in the manifest (``handler: registry.handlers.text:SentenceEmbedding``); the
contract they follow, and that your own handlers follow, is ``registry.handler``.
"""
