"""schemathesis hooks for ragway (loaded through SCHEMATHESIS_HOOKS by tests/tests/schemathesis.rs).

ragway answers 503 when a dependency is down or busy, or when no retrieval path worked (the body
then still says `mode: error`); those are documented, and their bodies are checked against the
schema like any other. Any other 5xx is a bug.
"""

import schemathesis


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


# The server's default chunk size (retrieval.chunk_words), for a create request that leaves it out.
DEFAULT_CHUNK_WORDS = 120


@schemathesis.hook
def filter_body(ctx, body):
    """Keeps POST /v1/collections bodies within the one rule no JSON Schema can state, a relation
    between two fields: chunk_overlap_words < chunk_words. Every other rule is in the schema."""
    operation = ctx.operation
    if operation is None or operation.path != "/v1/collections" or operation.method.upper() != "POST":
        return True
    if not isinstance(body, dict):
        return True
    overlap = body.get("chunk_overlap_words")
    words = body.get("chunk_words")
    if words is None:
        words = DEFAULT_CHUNK_WORDS
    if not isinstance(overlap, int) or not isinstance(words, int):
        return True
    return overlap < words
