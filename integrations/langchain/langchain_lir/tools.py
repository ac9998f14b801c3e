"""Agent tools over a LIRRetriever: search, read a document page by page, and a toolkit."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.documents import Document
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from langchain_lir.retrievers import LIRRetriever
from lir_agent import LIRError
from lir_agent.errors import describe_validation_error
from lir_agent.formatting import CHARS_PER_TOKEN, format_passages


def explain_validation_error(error: ValidationError | Exception) -> str:
    """Tells the model which argument was wrong and why, so it can call again correctly."""
    if isinstance(error, ValidationError):
        return f"Invalid tool arguments: {describe_validation_error(error)}"
    return f"Invalid tool arguments: {error}"


class SearchInput(BaseModel):
    """Arguments of the search tool."""

    query: str = Field(description="What to look for, in natural language.")
    k: int | None = Field(default=None, ge=1, le=100, description="How many passages to return.")
    filter: dict[str, Any] | None = Field(
        default=None,
        description='Optional metadata filter, e.g. {"year": {"$gte": 2020}} or {"source": {"$in": ["a", "b"]}}.',
    )


class ReadDocumentInput(BaseModel):
    """Arguments of the read-document tool."""

    id: str = Field(description="The id of a document, as shown by the search tool.")
    offset: int = Field(default=0, ge=0, description="Character offset to start reading at.")


class _LIRTool(BaseTool):
    """What the LIR tools share: a retriever, a token budget, content-and-artifact answers, and
    errors handed back to the model instead of raised."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool = True
    handle_validation_error: Any = explain_validation_error
    retriever: LIRRetriever
    max_tokens: int = Field(default=1500, ge=50, description="Token budget of the text handed to the model.")


class LIRSearchTool(_LIRTool):
    """Searches the index; content: numbered passages within a token budget; artifact: Documents."""

    name: str = "lir_search"
    description: str = (
        "Search the document collection. Returns numbered passages with their ids and relevance scores. "
        "Rephrase and search again if the passages do not answer the question."
    )
    args_schema: type[BaseModel] = SearchInput

    def _format(self, documents: list[Document]) -> tuple[str, list[Document]]:
        passages = [(d.id, d.metadata["score"], d.page_content) for d in documents]
        return format_passages(passages, self.max_tokens), documents

    def _run(self, query: str, k: int | None = None, filter: dict[str, Any] | None = None,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, list[Document]]:
        config = {"callbacks": run_manager.get_child()} if run_manager else None
        try:
            return self._format(self.retriever.invoke(query, config, k=k, filter=filter))
        except LIRError as exc:
            raise ToolException(str(exc)) from exc

    async def _arun(self, query: str, k: int | None = None, filter: dict[str, Any] | None = None,
                    run_manager: AsyncCallbackManagerForToolRun | None = None) -> tuple[str, list[Document]]:
        config = {"callbacks": run_manager.get_child()} if run_manager else None
        try:
            return self._format(await self.retriever.ainvoke(query, config, k=k, filter=filter))
        except LIRError as exc:
            raise ToolException(str(exc)) from exc


class LIRReadDocumentTool(_LIRTool):
    """Reads one document by id, a page at a time (for documents longer than a search passage)."""

    name: str = "lir_read_document"
    description: str = (
        "Read the full text of a document by its id, one page at a time. "
        "If the page ends early, call again with the offset it gives."
    )
    args_schema: type[BaseModel] = ReadDocumentInput

    def _run(self, id: str, offset: int = 0,
             run_manager: CallbackManagerForToolRun | None = None) -> tuple[str, Document]:
        try:
            stored = self.retriever.index.get(id)
        except LIRError as exc:
            raise ToolException(str(exc)) from exc
        text = stored.text
        if offset >= len(text) and offset > 0:
            raise ToolException(f"offset {offset} is past the end of document {id!r} ({len(text)} characters)")
        end = offset + self.max_tokens * CHARS_PER_TOKEN
        page = text[offset:end]
        header = f"document {id} characters {offset}-{offset + len(page)} of {len(text)}"
        footer = f"\n(continues: call again with offset={offset + len(page)})" if end < len(text) else ""
        document = Document(id=id, page_content=page, metadata={**stored.metadata, "offset": offset})
        return f"{header}\n{page}{footer}", document


class LIRToolkit(BaseToolkit):
    """The agent tools over one retriever. ``get_tools()`` returns all of them; new tools join
    that list without changing callers."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: LIRRetriever
    max_tokens: int = 1500

    def get_tools(self) -> list[BaseTool]:
        return [
            LIRSearchTool(retriever=self.retriever, max_tokens=self.max_tokens),
            LIRReadDocumentTool(retriever=self.retriever, max_tokens=self.max_tokens),
        ]
