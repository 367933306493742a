"""The native Qwen3-Embedding engine and everything torch: checkpoint files (:mod:`.hub`),
weights (:mod:`.loader`, :mod:`.quantize`), the model (:mod:`.model`), one forward pass
(:mod:`.engine`, or :mod:`.worker` in a child process) and the local embedder
(:mod:`.embedder`).

Nothing outside this package imports it except through the registry (``smysl.load``), so
remote models work where torch is not installed. Importing the package itself is light: import
the modules you need.
"""
