"""The RAG frameworks' own clients against ragway, each with only a base URL and a key changed:
LangChain's and LlamaIndex's OpenAI integrations (chat and embeddings), Haystack's OpenAI
components, Cohere's SDK (v1 and v2 rerank) and LlamaIndex's Jina reranker.

Usage: python check.py <ragway base URL> <tenant key> <collection> <answer text> <embedding model>
One line per client as it passes; any failure raises (non-zero exit).
"""

import math
import sys

base, key, collection, answer, embedder = sys.argv[1:6]
v1 = f"{base}/v1"
question = "Which volcano in Sicily erupts often?"
passages = [
    "An espresso is brewed by forcing hot water through finely ground coffee.",
    "Mount Etna in Sicily is one of the most active volcanoes in Europe.",
    "The marathon is a long-distance running race of 42.195 kilometres.",
]


def unit_vector(vector, dimension=384):
    assert len(vector) == dimension, len(vector)
    assert abs(math.sqrt(sum(x * x for x in vector)) - 1.0) < 1e-3


def passed(name):
    print(f"{name}: ok", flush=True)


# LangChain (langchain-openai). Its embeddings client counts tokens with OpenAI's tiktoken and sends
# token ids unless told not to; for any server that is not OpenAI, LangChain's docs say to turn that
# off, as here.
from langchain_openai import ChatOpenAI, OpenAIEmbeddings  # noqa: E402

chat = ChatOpenAI(base_url=v1, api_key=key, model=collection, max_retries=0)
reply = chat.invoke(question)
assert reply.content == answer, reply
streamed = "".join(chunk.content for chunk in chat.stream(question))
assert streamed == answer, streamed
embeddings = OpenAIEmbeddings(base_url=v1, api_key=key, model=embedder, check_embedding_ctx_length=False)
vectors = embeddings.embed_documents(passages)
assert len(vectors) == 3
unit_vector(vectors[0])
unit_vector(embeddings.embed_query(question))
passed("langchain")

# LlamaIndex: OpenAILike for a chat model that is not one of OpenAI's names, OpenAIEmbedding.
from llama_index.core.llms import ChatMessage  # noqa: E402
from llama_index.embeddings.openai import OpenAIEmbedding  # noqa: E402
from llama_index.llms.openai_like import OpenAILike  # noqa: E402

llm = OpenAILike(api_base=v1, api_key=key, model=collection, is_chat_model=True, max_retries=0)
response = llm.chat([ChatMessage(role="user", content=question)])
assert response.message.content == answer, response
completion = llm.complete(question)
assert completion.text == answer, completion
embed_model = OpenAIEmbedding(api_base=v1, api_key=key, model_name=embedder, max_retries=0)
unit_vector(embed_model.get_text_embedding(passages[1]))
assert len(embed_model.get_text_embedding_batch(passages)) == 3
unit_vector(embed_model.get_query_embedding(question))
passed("llama-index")

# Haystack (haystack-ai): OpenAIChatGenerator, OpenAITextEmbedder, OpenAIDocumentEmbedder.
from haystack import Document  # noqa: E402
from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder  # noqa: E402
from haystack.components.generators.chat import OpenAIChatGenerator  # noqa: E402
from haystack.dataclasses import ChatMessage as HaystackMessage  # noqa: E402
from haystack.utils import Secret  # noqa: E402

generator = OpenAIChatGenerator(api_key=Secret.from_token(key), model=collection, api_base_url=v1, max_retries=0)
replies = generator.run(messages=[HaystackMessage.from_user(question)])["replies"]
assert replies[0].text == answer, replies
text_embedder = OpenAITextEmbedder(api_key=Secret.from_token(key), model=embedder, api_base_url=v1)
unit_vector(text_embedder.run(text=question)["embedding"])
document_embedder = OpenAIDocumentEmbedder(api_key=Secret.from_token(key), model=embedder, api_base_url=v1)
documents = document_embedder.run(documents=[Document(content=p) for p in passages])["documents"]
assert len(documents) == 3
unit_vector(documents[2].embedding)
passed("haystack")


def best_first(results, top_n):
    assert len(results) == top_n, results
    scores = [r.relevance_score for r in results]
    assert scores == sorted(scores, reverse=True), scores
    assert all(0 <= r.index < len(passages) for r in results)


# Cohere's SDK: v2 (ClientV2) and v1 (Client) rerank.
import cohere  # noqa: E402

v2 = cohere.ClientV2(api_key=key, base_url=base)
ranked = v2.rerank(model="rerank-v3.5", query=question, documents=passages, top_n=2)
best_first(ranked.results, 2)
legacy = cohere.Client(api_key=key, base_url=base)
ranked = legacy.rerank(model="rerank-english-v3.0", query=question, documents=passages, top_n=3, return_documents=True)
best_first(ranked.results, 3)
assert ranked.results[0].document.text in passages, ranked.results[0]
ranked = legacy.rerank(query=question, documents=[{"text": p} for p in passages], top_n=1)
best_first(ranked.results, 1)
passed("cohere")

# Jina's rerank API as LlamaIndex's JinaRerank calls it.
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.postprocessor.jinaai_rerank import JinaRerank  # noqa: E402

jina = JinaRerank(api_key=key, base_url=v1, model="jina-reranker-v2-base-multilingual", top_n=2)
nodes = [NodeWithScore(node=TextNode(text=p), score=0.0) for p in passages]
reranked = jina.postprocess_nodes(nodes, query_bundle=QueryBundle(question))
assert len(reranked) == 2, reranked
assert reranked[0].score >= reranked[1].score, reranked
passed("jina")
