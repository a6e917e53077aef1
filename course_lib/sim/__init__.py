"""The simulated OpenAI-compatible provider: model table, fault plans, in-process transport and
a real HTTP server. See `SimProvider` and `FaultPlan`."""

from .content import Planted, planted_for
from .faults import FaultPlan, FaultPlanError
from .models import MODELS, ModelSpec, cost_usd, count_prompt_tokens, count_tokens
from .provider import CallRecord, SimProvider, SimReply
from .transport import SimTransport

__all__ = [
    "FaultPlan", "FaultPlanError", "MODELS", "ModelSpec", "cost_usd", "count_prompt_tokens", "count_tokens",
    "CallRecord", "SimProvider", "SimReply", "SimTransport", "Planted", "planted_for",
]
