-- POSTs one chat completion, again and again: with `seed` set it is relayed by ragway as written.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model": "' .. (os.getenv("MODEL") or "fast") .. '", "seed": 7, "max_tokens": 16, "messages": [{"role": "user", "content": "At what pressure is espresso brewed?"}]}'
