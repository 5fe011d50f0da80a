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
