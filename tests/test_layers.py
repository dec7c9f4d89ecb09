"""keep_layers: subsets of transformer layers on every anatomy row."""

from __future__ import annotations

import pytest
import torch

from plmkit.anatomy import locate
from plmkit.layers import keep_layers
from tests.conftest import DECODER_TYPES, ENCODER_TYPES

IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])


def _model(make_encoder, make_decoder, model_type):
    maker = make_decoder if model_type in DECODER_TYPES else make_encoder
    return maker(model_type).model.eval()


def _hidden(model):
    """(hidden states after each layer, last hidden state) of the base model on IDS."""
    with torch.no_grad():
        out = locate(model).base(input_ids=IDS, output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


def _finish(model, state):
    """What the base model outputs for ``state`` after its last layer (a decoder's final norm)."""
    found = locate(model)
    norm = found.anatomy.final_norm
    with torch.no_grad():
        return found.base.get_submodule(norm)(state) if norm else state


@pytest.mark.parametrize("model_type", ENCODER_TYPES + DECODER_TYPES)
def test_keeping_all_layers_is_the_identity_and_a_prefix_matches_the_full_model(make_encoder, make_decoder,
                                                                                  model_type):
    model = _model(make_encoder, make_decoder, model_type)
    states, last = _hidden(model)
    whole = keep_layers(_model(make_encoder, make_decoder, model_type), [0, 1])
    torch.testing.assert_close(_hidden(whole)[1], last)
    first = keep_layers(_model(make_encoder, make_decoder, model_type), [0])
    row = locate(first).anatomy
    assert len(locate(first).layers) == 1 and row.depth(locate(first).base.config) == 1
    torch.testing.assert_close(_hidden(first)[1], _finish(model, states[1]))


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "llama", "gpt2"])
def test_reordered_subset_round_trips_through_save_pretrained(make_encoder, make_decoder, model_type, tmp_path):
    model = _model(make_encoder, make_decoder, model_type)
    kept = keep_layers(model, [1, 0])
    expected = _hidden(kept)[1]
    kept.save_pretrained(tmp_path / "kept")
    loaded = type(kept).from_pretrained(tmp_path / "kept").eval()
    assert len(locate(loaded).layers) == 2
    torch.testing.assert_close(_hidden(loaded)[1], expected)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_reordered_layers_compute_the_swapped_chain(make_encoder, make_decoder, model_type):
    """keep [1, 0]: layer 1 reads the embeddings, layer 0 reads its output; checked layer by layer."""
    model = _model(make_encoder, make_decoder, model_type)
    layers = list(locate(model).layers)
    swapped = keep_layers(_model(make_encoder, make_decoder, model_type), [1, 0])
    states, _ = _hidden(swapped)
    kept = locate(swapped).layers
    for new_index, old_index in enumerate([1, 0]):
        for name, param in kept[new_index].named_parameters():
            torch.testing.assert_close(param, layers[old_index].get_parameter(name))
    assert not torch.allclose(states[1], _hidden(model)[0][1])


def test_bad_index_lists_are_refused(make_encoder):
    model = make_encoder("bert").model
    with pytest.raises(ValueError, match="index list is empty"):
        keep_layers(model, [])
    with pytest.raises(ValueError, match=r"\[2, -1\] are out of range: the model has layers 0..1"):
        keep_layers(model, [0, 2, -1])
    with pytest.raises(ValueError, match="repeat a layer"):
        keep_layers(model, [1, 1])
    assert len(locate(model).layers) == 2  # nothing changed
