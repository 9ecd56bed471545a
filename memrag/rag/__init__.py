"""The RAG core: prompts that reference stored documents, answered by splicing their memory.

Neither LangChain nor HTTP: :mod:`memrag.langchain` (the chat model, the LLM, the vector
store) and :mod:`memrag.server` (the OpenAI-compatible server) are adapters over it.

* :mod:`memrag.rag.markers` — signed references to documents inside prompt text;
* :mod:`memrag.rag.formatting` — retrieved documents rendered into a QA prompt;
* :mod:`memrag.rag.sources` — where referenced documents come from;
* :mod:`memrag.rag.prompt` — :class:`~memrag.rag.prompt.PromptSpec`, a parsed prompt;
* :mod:`memrag.rag.answerer` — :class:`~memrag.rag.answerer.Answerer`: fetch, splice, decode;
* :mod:`memrag.rag.threads` — a decoder's stream consumed from async code.
"""
