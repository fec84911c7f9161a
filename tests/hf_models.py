"""Tiny Hugging Face models built and saved locally inside tests: the same from_pretrained path users hit."""

from __future__ import annotations

from pathlib import Path

import torch

SIZE = 16  # image side of every tiny model here
_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_vit_classifier(path: Path, labels: list[str], seed: int = 0) -> Path:
    """A 2-layer ViT image classifier with `id2label` = labels, plus its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(image_size=SIZE, patch_size=4, num_channels=3, **_TINY,
                       id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5, 0.5, 0.5],
                      image_std=[0.25, 0.25, 0.25]).save_pretrained(path)
    return path


def tiny_siglip(path: Path, words: list[str], seed: int = 0) -> Path:
    """A 2-layer SigLIP (vision + text) with a word-level tokenizer over `words`, plus its image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipImageProcessor, SiglipModel

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                            model_max_length=16).save_pretrained(path)
    torch.manual_seed(seed)
    config = SiglipConfig(text_config={**_TINY, "vocab_size": len(vocab), "max_position_embeddings": 16,
                                       "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None},
                          vision_config={**_TINY, "image_size": SIZE, "patch_size": 4})
    SiglipModel(config).save_pretrained(path)
    SiglipImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    return path
