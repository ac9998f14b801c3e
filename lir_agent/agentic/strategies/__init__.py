"""Multi-hop strategies over search sessions: ``strategy.run(question, session) -> MultiHopResult``
(:mod:`.base`); LLM-free ones in the embedding space (:mod:`.llm_free`); LLM-driven ones
(:mod:`.llm_driven`: IRCoT, self-ask, HyDE, and the gold-decomposition oracle) calling any model
through :mod:`.models` with the prompts of :mod:`.prompts`.

``STRATEGIES`` maps each strategy's name to its class; ``DEFAULT_STRATEGY`` names the LLM-free
default (why it wins: the README's multi-hop section and ``benchmarks/agentic.py``).
"""

import inspect
from typing import Any

from ...errors import InvalidInputError
from .base import Hop, MultiHopResult, Strategy, interleave, reciprocal_rank_fusion
from .llm_driven import Decomposition, IRCoT, OracleDecomposition, ReasoningExpansion, oracle_plans
from .llm_free import Beam, Condensed, Flipr, PseudoRelevanceFeedback, Single
from .models import ChatModel
from .prompts import Prompts

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    Single, Condensed, Flipr, PseudoRelevanceFeedback, Beam, IRCoT, Decomposition, ReasoningExpansion,
    OracleDecomposition)}
DEFAULT_STRATEGY = "condensed"


def make_strategy(name: str, k: int = 10, llm: Any = None, **options: Any) -> Strategy:
    """The strategy called ``name`` ("default": DEFAULT_STRATEGY) returning ``k`` documents;
    ``llm`` (a LangChain chat model, a LlamaIndex LLM or a callable str -> str) for those that
    need one; ``options``: the strategy's other settings ("oracle" needs ``plans``, from
    :func:`oracle_plans`). Raises InvalidInputError naming the known strategies for an unknown
    name, when a strategy that needs a model gets none, or for options it does not take."""
    name = DEFAULT_STRATEGY if name == "default" else name
    if name not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {name!r}; known: default, {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[name]
    if cls.needs_llm and llm is None:
        raise InvalidInputError(f"strategy {name!r} needs a model (llm=...)")
    parameters = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        known = ", ".join(p for p in parameters if p not in ("llm", "k"))
        raise InvalidInputError(f"strategy {name!r} takes no option {', '.join(unknown)}; its options: {known}")
    try:
        return cls(llm, k=k, **options) if cls.needs_llm else cls(k=k, **options)
    except TypeError as exc:  # a missing option
        raise InvalidInputError(f"strategy {name!r}: {exc}") from exc


__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "Beam", "ChatModel", "Condensed", "Decomposition", "Flipr", "Hop",
           "IRCoT", "MultiHopResult", "OracleDecomposition", "Prompts", "PseudoRelevanceFeedback",
           "ReasoningExpansion", "Single", "Strategy", "interleave", "make_strategy", "oracle_plans",
           "reciprocal_rank_fusion"]
