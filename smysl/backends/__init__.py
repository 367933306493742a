"""Backends other than the native Qwen3 engine, each behind :class:`smysl.base.BaseEmbedder`."""
