"""Writes a cross-encoder with random weights at a family's base size, for BENCHMARKS.md's speed
of each family beside PyTorch's (`crossenc bench --model OUT` and the reference's
`st_predict_bench.py OUT` on the same folder).

    python scripts/random_family_model.py FAMILY TOKENIZER_DIR OUT

FAMILY: modernbert (answerdotai/ModernBERT-base's config: 22 layers, hidden 768, intermediate
1152, a window of 128 on two layers in three), gte (bert-base's shape: 12 layers, hidden 768,
intermediate 3072, as gte-multilingual-base), deberta (DeBERTa-v3-base's config: 12 layers, hidden
768, 256 position buckets, relative distances up to 512), qwen3 (a causal-LM re-ranker at bert-base's
shape: 12 layers, hidden 768, 12 query and 4 key/value heads, intermediate 3072). TOKENIZER_DIR:
the tokenizer to take (all-MiniLM-L6-v2's WordPiece for the encoders, so STS-B's pairs have
their usual lengths; tests/fixtures/tiny-qwen3-reranker for qwen3, whose byte-level BPE and
chat template make prompts of 100-150 tokens, about what Qwen3-Reranker's make); the vocabulary
follows it. The folder is saved by sentence-transformers' `CrossEncoder.save`.
"""
import os, sys, tempfile
import torch
from transformers import (AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification, GteConfig, GteForSequenceClassification, ModernBertConfig,
                          ModernBertForSequenceClassification, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM)
from sentence_transformers import CrossEncoder

family, tok_dir, out = sys.argv[1:4]
torch.manual_seed(0)
if family == "qwen3":
    tok = AutoTokenizer.from_pretrained(tok_dir)
else:
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(tok_dir, "tokenizer.json"), unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]", model_max_length=512,
        model_input_names=["input_ids", "attention_mask"])
ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
           sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
if family == "modernbert":
    cfg = ModernBertConfig(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
                           max_position_embeddings=8192, num_labels=1, **ids)
    model = ModernBertForSequenceClassification(cfg)
elif family == "gte":
    cfg = GteConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    max_position_embeddings=8192, num_labels=1, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    model = GteForSequenceClassification(cfg)
elif family == "deberta":
    cfg = DebertaV2Config(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          max_position_embeddings=512, relative_attention=True, position_buckets=256,
                          max_relative_positions=-1, pos_att_type=["p2c", "c2p"], share_att_key=True,
                          norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
                          layer_norm_eps=1e-7, num_labels=1, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    model = DebertaV2ForSequenceClassification(cfg)
elif family == "qwen3":
    cfg = Qwen3Config(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=4, head_dim=64, max_position_embeddings=4096, vocab_size=len(tok),
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = Qwen3ForCausalLM(cfg)
else:
    sys.exit(f"unknown family {family}")
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    CrossEncoder(tmp, max_length=512, device="cpu").save(out)
print(out)
