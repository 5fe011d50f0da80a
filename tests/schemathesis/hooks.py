"""schemathesis hooks for ragway (loaded through SCHEMATHESIS_HOOKS by tests/tests/schemathesis.rs).

ragway answers 503 when a dependency is down or busy, or when no retrieval path worked (the body
then still says `mode: error`); those are documented, and their bodies are checked against the
schema like any other. Any other 5xx is a bug.
"""

import itertools
import re

import schemathesis


# `/import`'s body is NDJSON, generated as a string: sent as the text it is.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    if response.status_code >= 500 and response.status_code != 503:
        raise AssertionError(f"server error {response.status_code}: {response.text[:300]}")


# The server's default chunk size (retrieval.chunk_words), for a create request that leaves it out.
DEFAULT_CHUNK_WORDS = 120
# The create route's name rule, as the schema states it.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
NAME_MAX = 64
_creates = itertools.count()


def _create_body(case):
    """The body of a `POST /v1/collections` case, or `None` for any other case."""
    operation = case.operation
    if operation.path != "/v1/collections" or operation.method.upper() != "POST":
        return None
    return case.body if isinstance(case.body, dict) else None


# Case hooks rather than body hooks: schemathesis applies these in the coverage phase too.
@schemathesis.hook
def filter_case(ctx, case):
    """Keeps create bodies within a relation between two fields no JSON Schema can state:
    chunk_overlap_words < chunk_words. Every other rule is in the schema."""
    body = _create_body(case)
    if body is None:
        return True
    overlap = body.get("chunk_overlap_words")
    words = body.get("chunk_words")
    if words is None:
        words = DEFAULT_CHUNK_WORDS
    if not isinstance(overlap, int) or not isinstance(words, int):
        return True
    return overlap < words


@schemathesis.hook
def map_case(ctx, case):
    """A name is taken once created (a second create gets 409, a rule of the server's state), and
    generated names repeat often (the coverage phase sends `0` with each variant of the other
    fields): a run of mostly repeats read as a schema the server does not follow. Each valid name
    gets a suffix of its own, within the schema's pattern and length."""
    body = _create_body(case)
    name = body.get("name") if body is not None else None
    if isinstance(name, str) and len(name) <= NAME_MAX and NAME_PATTERN.match(name):
        suffix = f"-{next(_creates):05x}"
        case.body = {**body, "name": name[: NAME_MAX - len(suffix)] + suffix}
    return case
