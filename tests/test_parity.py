"""Every call of the reference fixture is reproduced within its tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from instructor_search import Instructor


def _model_for(call, tiny, tiny_without_normalize):
    model = (
        tiny
        if call["modules"] == "all"
        else Instructor(str(tiny_without_normalize), device="cpu", precision="fp32")
    )
    model.max_seq_length = call["max_seq_length"]
    return model


def test_fixture_walks_every_call(expected, tiny, tiny_without_normalize):
    atol = expected["tolerance"]["atol"]
    assert len(expected["calls"]) >= 10
    for call in expected["calls"]:
        model = _model_for(call, tiny, tiny_without_normalize)
        try:
            result = model.encode(call["inputs"], **call["encode_kwargs"])
        finally:
            model.max_seq_length = 512
        if call["encode_kwargs"].get("output_value") == "token_embeddings":
            assert len(result) == len(call["expected"]), call["name"]
            for got, want in zip(result, call["expected"]):
                np.testing.assert_allclose(
                    got.numpy(), np.array(want), atol=atol, err_msg=call["name"]
                )
        else:
            assert result.dtype == np.float32
            np.testing.assert_allclose(
                result, np.array(call["expected"]), atol=atol, err_msg=call["name"]
            )


def test_tokenization_matches_reference(expected, tiny):
    for call in expected["calls"]:
        if "tokenization" not in call:
            continue
        tiny.max_seq_length = call["max_seq_length"]
        try:
            for item, want in zip(call["inputs"], call["tokenization"]):
                [ids], [excluded] = tiny.tokenize([item])
                assert ids == want["input_ids"], (call["name"], item)
                assert excluded == want["instruction_tokens_excluded"], (call["name"], item)
        finally:
            tiny.max_seq_length = 512


def test_single_string_gives_one_vector(expected, tiny):
    call = next(c for c in expected["calls"] if c["name"] == "strings")
    vector = tiny.encode(call["inputs"][0])
    assert vector.shape == (tiny.dimension,)
    np.testing.assert_allclose(vector, call["expected"][0], atol=1e-5)


def test_flat_pair_is_two_bare_strings(tiny):
    flat = tiny.encode(["Represent the Science title:", "3D ActionSLAM"])
    separate = np.stack([tiny.encode("Represent the Science title:"), tiny.encode("3D ActionSLAM")])
    np.testing.assert_allclose(flat, separate, atol=1e-6)


def test_tuples_are_pairs_and_empty_list_is_empty(tiny):
    pair = ["Represent the Science title:", "3D ActionSLAM"]
    np.testing.assert_allclose(tiny.encode([tuple(pair)]), tiny.encode([pair]), atol=1e-7)
    assert tiny.encode([]).shape == (0, tiny.dimension)


def test_output_containers(tiny):
    import torch

    pairs = [["Represent the title:", "alpha beta"], ["", "gamma"]]
    tensor = tiny.encode(pairs, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, tiny.dimension)
    listed = tiny.encode(pairs, convert_to_numpy=False)
    assert isinstance(listed, list) and all(isinstance(t, torch.Tensor) for t in listed)
    features = tiny.encode(pairs, output_value=None)
    assert set(features[0]) >= {
        "input_ids",
        "attention_mask",
        "token_embeddings",
        "sentence_embedding",
    }
    np.testing.assert_allclose(
        features[1]["sentence_embedding"].numpy(), tensor[1].numpy(), atol=1e-6
    )


@pytest.mark.parametrize(
    "bad",
    [[["only instruction"]], [["instr", 3]], [["instr", "text"], "bare"], 42, [None]],
)
def test_bad_input_is_a_clear_error(tiny, bad):
    from instructor_search import InputError

    with pytest.raises(InputError):
        tiny.encode(bad)


def test_batch_size_and_order_do_not_change_vectors(tiny):
    texts = [["Represent the sentence: ", "word " * n] for n in range(1, 40, 3)]
    one = tiny.encode(texts, batch_size=1)
    many = tiny.encode(texts, batch_size=16)
    np.testing.assert_allclose(one, many, atol=1e-5)
    reversed_ = tiny.encode(texts[::-1], batch_size=5)[::-1]
    np.testing.assert_allclose(one, reversed_, atol=1e-5)
