"""The layers, one concept per file. Each file has `forward(...) -> (out, cache)` and, beside it,
`backward(dout, cache) -> gradients`. Caches are plain tuples that a debugger shows at a glance."""
