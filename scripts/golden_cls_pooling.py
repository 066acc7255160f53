"""Writes tests/fixtures/cls-pooling.json: all-MiniLM-L6-v2 as a bi-encoder with CLS pooling
(sentence-transformers' Pooling(pooling_mode="cls") then Normalize), its embeddings of a few
texts, the reference for tests/golden.rs's CLS pooling test.

    python scripts/golden_cls_pooling.py target/fixtures/all-MiniLM-L6-v2 tests/fixtures/cls-pooling.json
"""
import json, sys
from sentence_transformers import SentenceTransformer, models

model_dir, out = sys.argv[1], sys.argv[2]
texts = ["A man is playing a guitar.", "Paris is the capital of France.", "", "naïve café ☕ über"]
word = models.Transformer(model_dir, max_seq_length=128)
pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="cls")
st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
emb = st.encode(texts, convert_to_numpy=True)
json.dump({"max_seq_length": 128, "texts": texts, "embeddings": emb.tolist()}, open(out, "w"))
