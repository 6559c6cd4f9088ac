"""Conversations with one container: stateful sessions on /invocations and bidirectional streams.

Both map onto Triton's sequence batcher, so a stateful Triton model (one with
`sequence_batching` in its config.pbtxt) works unchanged: each session or
stream is one sequence, its correlation id allocated here.
"""
