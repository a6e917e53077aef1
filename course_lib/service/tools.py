"""The support agent's tools: what the model may ask the service to do, and what it gets back.

Small, read-only and deterministic on purpose: an agent's tools are its privileges, and these
can leak nothing but a made-up order table and a public policy. Arguments arrive as JSON text
written by the model, so they are checked like any other untrusted input; a bad call gets an
error result the model can read, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["ORDERS", "REFUND_POLICY", "TOOLS", "run_tool"]

ORDERS: dict[str, dict[str, Any]] = {
    "1001": {"order_id": "1001", "status": "shipped", "item": "espresso grinder", "eta": "2 days"},
    "1002": {"order_id": "1002", "status": "delivered", "item": "milk frother", "delivered_on": "last Monday"},
    "1003": {"order_id": "1003", "status": "processing", "item": "descaling kit", "eta": "5 days"},
}
REFUND_POLICY = ("Unused items can be returned within 30 days of delivery for a full refund. Opened items get "
                 "store credit. Refunds reach the original payment method within 5 business days.")

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "lookup_order",
        "description": "Look up an order by its order number: status, item and delivery estimate.",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["order_id"],
                       "properties": {"order_id": {"type": "string", "pattern": "^[0-9]{3,10}$",
                                                   "description": "The order number, digits only."}}}}},
    {"type": "function", "function": {
        "name": "refund_policy",
        "description": "Read the refund and return policy.",
        "parameters": {"type": "object", "additionalProperties": False, "properties": {}}}},
]


def _lookup_order(arguments: dict[str, Any]) -> dict[str, Any]:
    order_id = arguments.get("order_id")
    if not isinstance(order_id, str) or not order_id.isdigit():
        return {"error": "order_id must be a string of digits"}
    order = ORDERS.get(order_id)
    return dict(order) if order else {"error": f"no order {order_id}"}


def _refund_policy(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"policy": REFUND_POLICY}


_RUN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "lookup_order": _lookup_order, "refund_policy": _refund_policy}


def run_tool(name: str, arguments: str) -> str:
    """The tool's result as JSON text for a `tool` message; unknown tools and bad arguments get an
    error result, since the model, not the user, wrote them."""
    tool = _RUN.get(name)
    if tool is None:
        return json.dumps({"error": f"unknown tool {name!r}; known: {sorted(_RUN)}"})
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return json.dumps({"error": "arguments are not valid JSON"})
    if not isinstance(parsed, dict):
        return json.dumps({"error": "arguments must be a JSON object"})
    return json.dumps(tool(parsed))
