"""Payloads people send to /invocations, turned into Triton requests and back.

nginx sends native payloads (KServe v2 JSON, Triton's binary+json) straight
to Triton, but for v2 JSON to models with large outputs, which goes to the
v2 JSON writers (`writers.py`: the same service in processes of their own,
writing the JSON answers Triton would write on the model's thread).
Everything else reaches the payload service (`service.py`, an asyncio HTTP
server on a unix socket) through one nginx location:

- requests whose Content-Type or Accept nginx cannot serve natively;
- requests Triton refused (400, 500, 501): a simple-shape JSON body shares
  `application/json` with v2, so it is tried as v2 first and fails there in
  Triton's JSON parser, cheaply, before it is adapted here; a v2 body that
  failed is sent once more to read Triton's error (out of memory is 507);
- invocations of decoupled models, which stream.

The flow (`adapter.py`): the request's payload format (`formats.py`, the one
registry of formats, chosen by Content-Type) decodes the body into records with
its codec (`codecs/`); `records.py` turns records into input tensors using the
model's signature (`signature.py`, read with Triton's model-config schema);
`v2.py` builds Triton's binary request and reads its answer; the format Accept
chooses encodes the outputs. Nothing here knows about the HTTP server it runs in.
"""
