import pytest

from smysl.prompts import DEFAULT_TASK, QUERY_TEMPLATE, TASK_PRESETS, format_query, resolve_task


def test_query_template_is_exact() -> None:
    # no space after "Query:", newline between instruction and query
    assert format_query("what is x?", "Find it") == "Instruct: Find it\nQuery:what is x?"
    assert QUERY_TEMPLATE == "Instruct: {task}\nQuery:{text}"


def test_documents_and_blank_tasks_have_no_instruction() -> None:
    assert format_query("doc", None) == "doc"
    assert format_query("doc", "   ") == "doc"


def test_presets_resolve_and_custom_text_is_verbatim() -> None:
    assert resolve_task("retrieval") == DEFAULT_TASK
    assert resolve_task("sts") == TASK_PRESETS["sts"] == "Retrieve semantically similar text"
    assert resolve_task("Classify spam") == "Classify spam"
    # as the reference formats it: the spaces are part of the prompt (and of the vector)
    assert resolve_task(" Classify spam\n") == " Classify spam\n"
    assert format_query("q", "Find it ") == "Instruct: Find it \nQuery:q"
    assert resolve_task(" qa ") == TASK_PRESETS["qa"]  # a preset's name, padded
    # in any case, as TEI's prompt_name and input_type are read ("Retrieval" was refused as
    # a misspelt preset on every other path)
    assert resolve_task("Retrieval") == DEFAULT_TASK
    assert resolve_task("QA ") == TASK_PRESETS["qa"]
    assert resolve_task("STS") == TASK_PRESETS["sts"]


def test_non_string_instruction_is_rejected() -> None:
    with pytest.raises(ValueError, match="instruction must be a string"):
        resolve_task(3)  # type: ignore[arg-type]


def test_a_misspelt_preset_is_refused_not_embedded_as_the_instruction() -> None:
    """`--task retreival` was embedded as the instruction "retreival"."""
    for typo, preset in (("retreival", "retrieval"), ("clustring", "clustering"),
                         ("websearch", "web_search"), ("Retreival", "retrieval")):
        with pytest.raises(ValueError, match=f"looks like the preset '{preset}' misspelt"):
            resolve_task(typo)
    assert resolve_task("summarize") == "summarize"  # no preset is near it: as given
    assert resolve_task("Retrieve relevant passages") == "Retrieve relevant passages"


def test_the_task_of_a_query_prompt_is_read_by_the_template() -> None:
    """One home for the template: the task of Qwen3-Embedding's sentence-transformers query
    prompt, the native loader's and st:'s default task; other prompts have none."""
    from smysl.prompts import QUERY_TEMPLATE, task_of_query_prompt

    for task in ("Given a question, retrieve passages", "", "two\nlines"):
        prompt = QUERY_TEMPLATE.format(task=task, text="")
        assert task_of_query_prompt(prompt) == task
    for other in ("query: ", "", "Instruct: x\nQuery: ", "Instruct:\nQuery:"):
        assert task_of_query_prompt(other) is None


def test_the_whole_query_prompt_given_as_the_task_is_its_task() -> None:
    """A review's: the prompt as the model card and its sentence-transformers config write it,
    given as the task, went through the template again ("Instruct: Instruct: ...\\nQuery:
    \\nQuery:q", cosine 0.994 to the query's vector, unsaid). Its task is taken; other text
    holding the template's words is refused, naming what to give."""
    prompt = "Instruct: Find the FAQ answer\nQuery:"
    assert resolve_task(prompt) == "Find the FAQ answer"
    assert format_query("q", prompt) == format_query("q", "Find the FAQ answer")
    assert resolve_task("Instruct: qa\nQuery:") == TASK_PRESETS["qa"]
    for bad in ("Instruct: Find the FAQ answer", "Find it\nQuery:", "Instruct: x\nQuery: ",
                "Instruct: \nQuery:"):
        with pytest.raises(ValueError, match="holds the query template's own words"):
            resolve_task(bad)


def test_a_role_word_is_refused_not_embedded_as_the_instruction() -> None:
    """A review's: `task="query"` (TEI's prompt_name habit) embedded queries after
    "Instruct: query", neither the default query vector nor the document one."""
    for word in ("query", "Document", "passage ", "search_query"):
        with pytest.raises(ValueError, match="names a role, not a task"):
            resolve_task(word)
    assert resolve_task("Find the query's answer") == "Find the query's answer"
