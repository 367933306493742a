"""The native Qwen3-Embedding engine: checkpoint files (:mod:`.hub`, :mod:`.gguf`), weights
(:mod:`.loader`, :mod:`.quantize`), the model (:mod:`.model`), one forward pass
(:mod:`.engine`, or :mod:`.worker` in a child process), the local embedder (:mod:`.embedder`)
and reranker (:mod:`.reranker`).

Only what computes imports torch. The engine's contract (:mod:`.contract`), its clients in
other processes (:mod:`.client`), :mod:`.worker`, :mod:`.hub`, the embedder and the reranker
do not: a process whose engine runs in a child process needs none (a GGUF file's header and
tokenizer are read without it), nor do the processes it shares that engine with.

Nothing outside this package imports it except through the registry (``smysl.load``), so
remote models work where torch is not installed. Importing the package itself is light: import
the modules you need.
"""
