"""Writes tests/fixtures/tiny-modernbert/, tiny-modernbert-mean/, tiny-gte/, tiny-deberta-v3/,
tiny-deberta-v2/, tiny-qwen3-reranker/ and tiny-qwen2-reranker/: tiny random cross-encoders of the families that ../shared/golden lacks, as sentence-transformers saves them,
with the reference outputs that tests/golden.rs, tests/train_step.rs and tests/families.rs check
crossenc against.

    python scripts/golden_families.py ../shared/golden tests/fixtures

The ModernBERT models have 3 layers (global, sliding-window, global attention: `global_attn_every_n_layers`
2), a window of 8 tokens (`local_attention`) so that the golden pairs (up to 48 tokens) reach past
it, and an odd intermediate size. `tiny-modernbert` is the hub default (no biases, CLS pooling, one
label); `tiny-modernbert-mean` turns every bias on and pools by mean, with three labels. The
tokenizer is byte-level BPE with ModernBERT's `[CLS] a [SEP] b [SEP]` template, trained here on
the pairs' words (600 tokens). `tiny-gte` (transformers' `gte`: rotary embeddings, gated MLP,
post-norm layers, BERT's pooler) has 2 layers and ../shared/golden/tiny-xlm-roberta's Unigram
tokenizer, as the multilingual GTE models have XLM-R's. `tiny-deberta-v3` has DeBERTa-v3's
disentangled attention (8 log-scaled position buckets, so the longer pairs reach the log range;
shared attention keys; normed relative embeddings; no absolute positions or token types) and
`tiny-deberta-v2` v2's (relative positions up to 80, separate position projections, absolute
positions, token types; three labels); both take the same Unigram tokenizer. The causal-LM re-rankers (Qwen3: per-head
query/key norms, tied embeddings, head_dim 12 apart from hidden / heads; Qwen2: Q/K/V biases, an
untied lm_head) have grouped-query attention (4 query, 2 key/value heads), a byte-level BPE
trained here, and the Qwen3-Reranker prompt as a chat template over sentence-transformers'
query/document roles; their max length (110) cuts two of the pairs, so the template tail that
sentence-transformers restores after truncation is exercised.

`golden.json` holds the shared golden pairs, their token ids and mask at max_length 48, the raw
logits (dropout off) and `CrossEncoder.predict`'s scores; `grads.safetensors` every parameter's
gradient of one training batch (the 8 pairs, `labels`; BCE-with-logits for one label, cross
entropy for three, mean over the batch). Needs torch, transformers and sentence-transformers.
"""
import json, os, sys, tempfile
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, processors
from transformers import (AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification, GteConfig,
                          GteForSequenceClassification, ModernBertConfig,
                          ModernBertForSequenceClassification, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
from sentence_transformers import CrossEncoder

golden, out_root = sys.argv[1:3]
pairs = json.load(open(os.path.join(golden, "tiny-bert", "golden.json")))["pairs"]
MAX_LENGTH = 48


def tokenizer():
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [t for p in pairs for t in p] + ["the quick brown fox jumps over the lazy dog"] * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]", model_max_length=MAX_LENGTH, model_input_names=["input_ids", "attention_mask"])


def modernbert(num_labels, pooling, biases):
    tok = tokenizer()
    cfg = ModernBertConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=80, initializer_range=0.2, global_attn_every_n_layers=2, local_attention=8,
        global_rope_theta=160000.0, local_rope_theta=10000.0, norm_bias=biases, attention_bias=biases,
        mlp_bias=biases, classifier_bias=biases, classifier_pooling=pooling, num_labels=num_labels,
        pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, attn_implementation="eager")
    return ModernBertForSequenceClassification(cfg), tok


def gte():
    tok = AutoTokenizer.from_pretrained(os.path.join(golden, "tiny-xlm-roberta"))
    cfg = GteConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=80, initializer_range=0.2, num_labels=1,
                    pad_token_id=tok.pad_token_id, attn_implementation="eager")
    return GteForSequenceClassification(cfg), tok


def deberta(v3):
    """DeBERTa-v3's shape (log-bucketed relative positions, shared attention keys, normed relative
    embeddings, no absolute positions or token types), or v2's (plain relative positions up to
    max_position_embeddings, its own position projections, absolute positions, token types)."""
    tok = AutoTokenizer.from_pretrained(os.path.join(golden, "tiny-xlm-roberta"))
    variant = dict(position_buckets=8, share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False,
                   type_vocab_size=0, pos_att_type=["p2c", "c2p"]) if v3 else dict(
                   position_buckets=-1, share_att_key=False, norm_rel_ebd="none", position_biased_input=True,
                   type_vocab_size=2, pos_att_type=["c2p", "p2c"])
    cfg = DebertaV2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=80, initializer_range=0.2,
                          relative_attention=True, max_relative_positions=-1, hidden_act="gelu",
                          pooler_hidden_act="gelu", pooler_dropout=0.0, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, layer_norm_eps=1e-7, num_labels=1 if v3 else 3,
                          pad_token_id=tok.pad_token_id, attn_implementation="eager", **variant)
    return DebertaV2ForSequenceClassification(cfg), tok


def make(name, build, seed):
    torch.manual_seed(seed)
    model, tok = build()
    model = model.eval()
    num_labels = model.config.num_labels
    # Random norms and biases, so that parity tests see them (the init makes them 1 and 0);
    # initializer_range 0.2 above spreads the logits for the same reason.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n.lower() or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    out = os.path.join(out_root, name)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        ce = CrossEncoder(tmp, max_length=MAX_LENGTH, device="cpu")
        ce.save(out)
    ce = CrossEncoder(out, device="cpu")
    enc = ce.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True,
                       truncation="longest_first", max_length=MAX_LENGTH, return_tensors="pt")
    hf = ce.model.eval()
    with torch.no_grad():
        logits = hf(**enc).logits
    scores = ce.predict(pairs, convert_to_numpy=True)

    # One training batch: the gradient of every parameter.
    hf.zero_grad()
    if num_labels == 1:
        labels = [1.0, 0.0, 0.9, 0.2, 0.5, 0.1, 0.3, 0.52]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(hf(**enc).logits[:, 0], torch.tensor(labels))
    else:
        labels = [0, 2, 1, 0, 2, 1, 1, 0]
        loss = torch.nn.functional.cross_entropy(hf(**enc).logits, torch.tensor(labels))
    loss.backward()
    # Saved as transformers saves the weights, so the names are the checkpoint's (GTE's fused
    # qkv_proj and up_gate_proj are split in memory and joined again on save).
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.grad)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as f:
            grads = {k: f.get_tensor(k) for k in f.keys()}
    save_file(grads, os.path.join(out, "grads.safetensors"))
    json.dump({"pairs": pairs, "max_length": MAX_LENGTH, "input_ids": enc["input_ids"].tolist(),
               "attention_mask": enc["attention_mask"].tolist(), "logits": logits.tolist(),
               "predict_scores": scores.tolist(), "predict_activation": type(ce.activation_fn).__name__,
               "labels": labels, "loss": loss.item(),
               "torch": torch.__version__, "generated_by": "scripts/golden_families.py"},
              open(os.path.join(out, "golden.json"), "w"), indent=1)
    print(name, "logits", logits[:2].tolist(), "loss", loss.item())


# The Qwen3-Reranker prompt as a chat template over sentence-transformers' pair roles.
QWEN3_TEMPLATE = (
    '{%- set query = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}\n'
    '{%- set document = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}\n'
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: Given a '
    "web search query, retrieve relevant passages that answer the query\n<Query>: {{ query }}\n<Document>: "
    "{{ document }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


# Longer than the template (about 80 tokens here), shorter than the long pair's prompt.
QWEN3_MAX_LENGTH = 110


def causal_reranker(out, family):
    """A tiny Qwen3 (or Qwen2: biased Q/K/V, no per-head norms) causal LM with the Qwen3-Reranker
    template, loaded by sentence-transformers as a CrossEncoder (Transformer + LogitScore on the
    "yes" and "no" tokens) and saved."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [t for p in pairs for t in p] + ["yes", "no"] * 50 + [QWEN3_TEMPLATE] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=MAX_LENGTH)
    fast.chat_template = QWEN3_TEMPLATE
    assert fast.convert_tokens_to_ids("yes") != fast.unk_token_id and "yes" in fast.get_vocab()
    shape = dict(vocab_size=len(fast), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
                 rms_norm_eps=1e-6, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                 attn_implementation="eager")
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=12, tie_word_embeddings=True, **shape)).eval()
    else:
        model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=False, **shape)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
        CrossEncoder(tmp, max_length=QWEN3_MAX_LENGTH, device="cpu").save(out)
    ce = CrossEncoder(out, device="cpu")
    features = ce[0].preprocess(pairs)
    with torch.no_grad():
        raw = ce.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    scores = ce.predict(pairs, convert_to_numpy=True)
    json.dump({"pairs": pairs, "max_length": ce.max_length, "input_ids": features["input_ids"].tolist(),
               "attention_mask": features["attention_mask"].tolist(), "logits": [[v] for v in raw.tolist()],
               "predict_scores": scores.tolist(), "predict_activation": type(ce.activation_fn).__name__,
               "true_token": "yes", "false_token": "no", "torch": torch.__version__,
               "generated_by": "scripts/golden_families.py"},
              open(os.path.join(out, "golden.json"), "w"), indent=1)
    print(out, "logits", raw[:3].tolist(), "lengths", features["attention_mask"].sum(1).tolist())


make("tiny-modernbert", lambda: modernbert(1, "cls", False), 1)
make("tiny-modernbert-mean", lambda: modernbert(3, "mean", True), 2)
make("tiny-gte", gte, 3)
make("tiny-deberta-v3", lambda: deberta(True), 6)
make("tiny-deberta-v2", lambda: deberta(False), 7)
torch.manual_seed(4)
causal_reranker(os.path.join(out_root, "tiny-qwen3-reranker"), "qwen3")
torch.manual_seed(5)
causal_reranker(os.path.join(out_root, "tiny-qwen2-reranker"), "qwen2")
