"""A real TEI client, Haystack's HuggingFaceTEIRanker, against a running `crossenc serve` (run by
tests/serve.rs): its order and scores must be /rerank's, and with truncation_direction Left two
long documents that end alike must score alike (Right: those that start alike).

    python scripts/haystack_tei.py http://127.0.0.1:PORT API_KEY

Needs the packages that scripts/fetch-fixtures.sh installs into target/fixtures/py.
"""
import json, sys, urllib.request
import haystack
from haystack import Document
from haystack.components.rankers import HuggingFaceTEIRanker
from haystack.components.rankers.hugging_face_tei import TruncationDirection
from haystack.utils import Secret

url, key = sys.argv[1], sys.argv[2]
query = "What is the capital of France?"
docs = ["Paris is the capital and largest city of France.", "London is the capital of England.",
        "The Eiffel Tower is in Paris.", "Bananas are yellow.", "France is in Europe."]


def rerank(body):
    req = urllib.request.Request(url + "/rerank", data=json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


ranker = HuggingFaceTEIRanker(url=url, top_k=3, token=Secret.from_token(key))
want = [(docs[r["index"]], r["score"]) for r in rerank({"query": query, "texts": docs})][:3]
got = ranker.run(query=query, documents=[Document(content=d) for d in docs])["documents"]
assert [(d.content, d.score) for d in got] == want, f"{got} != {want}"

start_a, start_b = "a dog is running in the park " * 10, "a cat is sleeping on the couch " * 10
end_a, end_b = "a man is playing a guitar " * 10, "paris is the capital of france " * 10
long = [start_a + end_a, start_b + end_a, start_a + end_b]
scores = {}
for direction in [TruncationDirection.LEFT, TruncationDirection.RIGHT]:
    out = ranker.run(query="guitar", documents=[Document(content=t) for t in long],
                     truncation_direction=direction)["documents"]
    by_text = {d.content: d.score for d in out}
    scores[direction.value] = [by_text[t] for t in long]
left, right = scores["Left"], scores["Right"]
assert abs(left[0] - left[1]) < 1e-6 and abs(left[0] - left[2]) > 1e-4, left
assert abs(right[0] - right[2]) < 1e-6 and abs(right[0] - right[1]) > 1e-4, right
print(json.dumps({"haystack": haystack.__version__, "ranked": len(got), "left": left, "right": right}))
