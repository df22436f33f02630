"""`config_to_hf_dict` writes what `config_from_hf_dict` reads back unchanged, for every family, and what
transformers reads as the same model."""

from __future__ import annotations

import json

import pytest

from families import FAMILIES
from luodi.models.config import config_from_hf_dict, config_to_hf_dict

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=16384)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_dict_round_trip(family):
    config = config_from_hf_dict(FAMILIES[family](transformers, **COMMON).to_dict())
    again = config_from_hf_dict(json.loads(json.dumps(config_to_hf_dict(config))))
    assert again == config


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_reads_the_written_config(family):
    # transformers' own config class, built from what Luodi writes, must describe the same model.
    config = config_from_hf_dict(FAMILIES[family](transformers, **COMMON).to_dict())
    written = json.loads(json.dumps(config_to_hf_dict(config)))
    del written["architectures"]
    assert config_from_hf_dict(transformers.AutoConfig.for_model(**written).to_dict()) == config
