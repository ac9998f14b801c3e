"""LangChain's own standard test suites, run against the retriever and the tools."""

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests, ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from langchain_lir import LIRReadDocumentTool, LIRRetriever, LIRSearchTool


class _SampleIndex:
    """Points the suites' constructor parameters at the session's sample index."""

    index_path = None

    @pytest.fixture(autouse=True)
    def _sample_index(self, sample_index_path):
        type(self).index_path = str(sample_index_path)


class TestLIRRetrieverStandard(_SampleIndex, RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return LIRRetriever

    @property
    def retriever_constructor_params(self):
        return {"index_path": self.index_path, "k": 2}

    @property
    def retriever_query_example(self):
        return "Which game was originally published as Chaos Progenitus?"


class _SearchTool(_SampleIndex):
    @property
    def tool_constructor(self):
        return LIRSearchTool

    @property
    def tool_constructor_params(self):
        return {"retriever": LIRRetriever(index_path=self.index_path, k=3)}

    @property
    def tool_invoke_params_example(self):
        return {"query": "a collectible dice game", "k": 2, "filter": {"title": {"$ne": "nothing"}}}


class TestLIRSearchToolUnit(_SearchTool, ToolsUnitTests):
    pass


class TestLIRSearchToolIntegration(_SearchTool, ToolsIntegrationTests):
    pass


class _ReadTool(_SampleIndex):
    @property
    def tool_constructor(self):
        return LIRReadDocumentTool

    @property
    def tool_constructor_params(self):
        return {"retriever": LIRRetriever(index_path=self.index_path)}

    @property
    def tool_invoke_params_example(self):
        return {"id": "hotpotqa_train100-p0", "offset": 10}


class TestLIRReadDocumentToolUnit(_ReadTool, ToolsUnitTests):
    pass


class TestLIRReadDocumentToolIntegration(_ReadTool, ToolsIntegrationTests):
    pass
