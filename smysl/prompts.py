"""Instruction prompts: the exact Qwen3-Embedding query template and named task presets.

Qwen3-Embedding is instruction-aware on the query side only: a query is embedded as
``Instruct: {task}\\nQuery:{text}`` (no space after ``Query:``) and a document as its bare text.
"""

from __future__ import annotations

QUERY_TEMPLATE = "Instruct: {task}\nQuery:{text}"

#: The task the model card uses when none is given (web search retrieval).
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

#: Named task presets. Clients may send a preset name wherever an instruction is accepted.
TASK_PRESETS: dict[str, str] = {
    "retrieval": DEFAULT_TASK,
    "web_search": DEFAULT_TASK,
    "sts": "Retrieve semantically similar text",
    "paraphrase": "Retrieve semantically similar text",
    "qa": "Given a question, retrieve passages that answer the question",
    "classification": "Classify the given text by its topic and intent",
    "sentiment": "Classify the sentiment of the given text as positive, negative or neutral",
    "clustering": "Identify the topic or theme of the given text",
    "dedup": "Retrieve semantically similar text",
    "bitext": "Retrieve parallel sentences",
}


#: Words that name a side of the search, not a task: sent as an instruction (a TEI
#: ``prompt_name`` habit, nomic's prefixes), the query was embedded after "Instruct: query".
ROLE_WORDS = frozenset({"query", "queries", "question", "document", "documents", "doc",
                        "docs", "passage", "passages", "search_query", "search_document"})


def resolve_task(task: str | None) -> str | None:
    """Map a preset name (any case) to its instruction; the whole query prompt
    (``"Instruct: {task}\\nQuery:"``, as the model card writes it) to its task; any other
    string is used verbatim (the reference formats it as given: surrounding spaces change the
    vector), and an empty or all-whitespace one means no instruction."""
    if task is None:
        return None
    if not isinstance(task, str):
        raise ValueError(f"instruction must be a string, got {type(task).__name__}")
    name = task.strip()
    if not name:
        return None
    if name.lower() in TASK_PRESETS:  # "Retrieval" was refused as a misspelt "retrieval"
        return TASK_PRESETS[name.lower()]
    inner = task_of_query_prompt(task)
    if inner is not None and inner.strip():
        # the whole query prompt, as the model card and its sentence-transformers config
        # write it: the template went round it twice ("Instruct: Instruct: ...", cosine
        # 0.994 to the query's vector, unsaid). Its task is meant, exactly
        return resolve_task(inner)
    if name.startswith("Instruct:") or "\nQuery:" in task:
        raise ValueError(f"instruction {task!r} holds the query template's own words: give the "
                         "task alone (smysl writes 'Instruct: {task}\\nQuery:{text}' round it), "
                         "or the whole prompt exactly as the model card writes it")
    if name.lower() in ROLE_WORDS:
        raise ValueError(f"instruction {task!r} names a role, not a task: a query gets the "
                         "default instruction unless one is given (a sentence, or a preset: "
                         f"{', '.join(TASK_PRESETS)}), a document none; to embed documents, "
                         "give no instruction")
    typo = misspelt_preset(name)
    if typo is not None:  # "retreival" was embedded as the instruction "retreival"
        raise ValueError(f"instruction {task!r} looks like the preset {typo!r} misspelt; "
                         f"presets: {', '.join(TASK_PRESETS)} (an instruction of your own is "
                         f"a sentence)")
    return task


def misspelt_preset(name: str) -> str | None:
    """The preset a one-word ``name`` (no spaces) is a near miss of, if any: a single word
    is no instruction the model was trained on, a misspelt preset name is likely."""
    import difflib

    if any(c.isspace() for c in name):
        return None
    close = difflib.get_close_matches(name.lower(), list(TASK_PRESETS), n=1, cutoff=0.8)
    return close[0] if close else None


def expand_preset(instruction: str | None) -> str | None:
    """A reranker's instruction as :func:`resolve_task` reads it (a preset's name as its
    sentence; a misspelt one, a role word or the embedding template's words refused), except
    that ``""`` and None are kept as given (the reranker's template takes an empty instruction
    as it is)."""
    if instruction is None or not instruction.strip():
        return instruction
    return resolve_task(instruction)


def task_of_query_prompt(prompt: str) -> str | None:
    """The task of a sentence-transformers ``query`` prompt written with
    :data:`QUERY_TEMPLATE` (``"Instruct: {task}\\nQuery:"``, as Qwen3-Embedding's
    ``config_sentence_transformers.json`` has it), else None."""
    head, _, tail = QUERY_TEMPLATE.partition("{task}")
    end = tail.removesuffix("{text}")
    if prompt.startswith(head) and prompt.endswith(end) and len(prompt) >= len(head + end):
        return prompt[len(head):len(prompt) - len(end)]
    return None


def format_query(text: str, task: str | None) -> str:
    """Apply the query template; with no task the text is returned unchanged (document side)."""
    resolved = resolve_task(task)
    if resolved is None:
        return text
    return QUERY_TEMPLATE.format(task=resolved, text=text)
