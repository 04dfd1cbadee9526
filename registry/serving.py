"""One prediction, protocol-neutral: body bytes in, body bytes out.

Both front ends call this: the FastAPI routes (documented, dependency-injected) and the
ASGI fast path in front of them, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio

from registry.codec import decode_inputs, encode_prediction
from registry.errors import InferenceTimeout
from registry.model import LoadedModel


async def predict_json(model: LoadedModel, body: bytes, timeout_s: float) -> bytes:
    """Decode, queue behind other requests, wait at most ``timeout_s``, encode."""
    instances = decode_inputs(body, model.spec.input)
    try:
        async with asyncio.timeout(timeout_s):
            outputs = await model.predict(instances.array)
    except TimeoutError:
        raise InferenceTimeout(
            f"{model.key} did not answer within {timeout_s} s",
            model=model.name,
            version=model.version.version,
        ) from None
    return encode_prediction(
        model.name, model.version.version, outputs, instances.batched, model.spec.output.labels
    )


def provenance(model: LoadedModel) -> dict[str, str]:
    """The headers every prediction carries, so a client knows what answered."""
    return {"X-Model-Name": model.name, "X-Model-Version": model.version.version}
