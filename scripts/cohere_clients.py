"""The real Cohere SDK against a running `crossenc serve` (run by tests/serve.rs): `Client.rerank`
(v1) and `ClientV2.rerank` (v2) with base_url at the server must give the order and scores of
TEI's /rerank, and /openapi.json must validate as OpenAPI 3.1.

    python scripts/cohere_clients.py http://127.0.0.1:PORT API_KEY

Needs the packages that scripts/fetch-fixtures.sh installs into target/fixtures/py.
"""
import json, sys, urllib.request
import cohere
from openapi_spec_validator import validate

url, key = sys.argv[1], sys.argv[2]
query = "What is the capital of France?"
docs = ["Paris is the capital and largest city of France.", "London is the capital of England.",
        "The Eiffel Tower is in Paris.", "Bananas are yellow.", "France is in Europe."]


def get(path, body=None):
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    return json.load(urllib.request.urlopen(req))


tei = get("/rerank", {"query": query, "texts": docs})
want = [(r["index"], r["score"]) for r in tei][:3]

v1 = cohere.Client(api_key=key, base_url=url).rerank(query=query, documents=docs, top_n=3,
                                                     return_documents=True)
got = [(r.index, r.relevance_score) for r in v1.results]
assert got == want, f"v1: {got} != {want}"
assert [r.document.text for r in v1.results] == [docs[i] for i, _ in want], "v1 documents"

v2 = cohere.ClientV2(api_key=key, base_url=url).rerank(model="crossenc", query=query, documents=docs,
                                                       top_n=3)
got = [(r.index, r.relevance_score) for r in v2.results]
assert got == want, f"v2: {got} != {want}"

try:
    cohere.ClientV2(api_key="wrong", base_url=url).rerank(model="m", query=query, documents=docs)
    raise AssertionError("a wrong key was accepted")
except cohere.core.api_error.ApiError as e:
    assert e.status_code == 401, e

validate(get("/openapi.json"))
print(json.dumps({"cohere": cohere.__version__, "v1": len(v1.results), "v2": len(v2.results),
                  "openapi": "valid"}))
