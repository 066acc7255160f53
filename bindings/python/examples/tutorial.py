"""The tutorial's script (sentence-transformers' cross-encoder on STS-B) with two imports
changed: `sentence_transformers` -> `crossenc`, and its evaluator from `crossenc.evaluation`.
It fine-tunes a pretrained encoder with a one-output head, evaluates with Pearson and Spearman,
saves, reloads, scores pairs and ranks candidates for a query.

    python tutorial.py MODEL [EPOCHS] [MAX_TRAIN_PAIRS]

STS-B is read from $STSB_DIR (default: the repository's data/stsb). torch's DataLoader is used
where torch is installed (as the tutorial does); crossenc itself needs no torch.
"""
import csv
import math
import os
import sys
from datetime import datetime

from crossenc import CrossEncoder, InputExample
from crossenc.evaluation import CECorrelationEvaluator

try:
    from torch.utils.data import DataLoader
except ImportError:
    DataLoader = None

model_name = sys.argv[1]
num_epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 1
max_train = int(sys.argv[3]) if len(sys.argv) > 3 else None
train_batch_size = 16
here = os.path.dirname(os.path.abspath(__file__))
sts_dir = os.environ.get("STSB_DIR", os.path.join(here, "..", "..", "..", "data", "stsb"))
model_save_path = os.environ.get(
    "OUTPUT_DIR", "output/training_stsbenchmark-" + datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))

# Read STS-B: each row is sentence1, sentence2, score (0-5).
def read(split):
    samples = []
    with open(os.path.join(sts_dir, f"stsb-en-{split}.csv"), encoding="utf-8") as f:
        for s1, s2, score in csv.reader(f):
            score = float(score) / 5.0  # Normalize score to range 0 ... 1
            samples.append(InputExample(texts=[s1, s2], label=score))
    return samples

train_samples, dev_samples, test_samples = read("train"), read("dev"), read("test")
if max_train:
    train_samples = train_samples[:max_train]

model = CrossEncoder(model_name, num_labels=1)
if DataLoader is not None:
    train_dataloader = DataLoader(train_samples, shuffle=True, batch_size=train_batch_size)
else:
    train_dataloader = train_samples
evaluator = CECorrelationEvaluator.from_input_examples(dev_samples, name="sts-dev")

warmup_steps = math.ceil(math.ceil(len(train_samples) / train_batch_size) * num_epochs * 0.1)  # 10% for warm-up
model.fit(train_dataloader=train_dataloader, evaluator=evaluator, epochs=num_epochs,
          warmup_steps=warmup_steps, output_path=model_save_path)

# Load the stored model and evaluate its performance on STS-B's test set.
model = CrossEncoder(model_save_path)
evaluator = CECorrelationEvaluator.from_input_examples(test_samples, name="sts-test")
print("test:", evaluator(model))

# Demo 1: score pairs.
pairs = [["A man is eating food.", "A man is eating a piece of bread."],
         ["A man is eating food.", "The girl is carrying a baby."]]
print("scores:", model.predict(pairs))

# Demo 2: rank candidates for a query.
query = "A man is eating pasta."
corpus = ["A man is eating food.", "A man is riding a horse.", "Two men pushed carts through the woods.",
          "A man is eating a piece of bread.", "A monkey is playing drums."]
for hit in model.rank(query, corpus, return_documents=True):
    print(f"{hit['score']:.4f}\t{hit['text']}")
