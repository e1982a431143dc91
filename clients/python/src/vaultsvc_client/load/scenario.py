"""What each load call asks for: template fields, inputs, and which secrets they name.

A scenario's templates may name secrets through slots, ``{{secret:$1}}``,
``{{secret:$2}}``...; each request fills them from a pool of names (the seeded
secrets, or ``--secret`` names): with ``same`` every request uses the pool's
first names, with ``random`` each request draws its own. Requests are built
here, once for ``same`` and per call for ``random``, with as little work as
possible on the hot path.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from interakt.vault.v1 import resolver_service_pb2 as resolver_pb

from .._common import template_fields
from .options import LoadUsageError, NamesMode

__all__ = ["SEED_SCENARIO", "RequestFactory", "Scenario", "load_template_file"]

MAX_TEMPLATE_FILE_BYTES = 8 * 1024 * 1024

_SLOT = re.compile(r"\{\{\s*secret:\s*\$(?P<slot>\d+)\s*\}\}")


@dataclass(frozen=True)
class Scenario:
    """Template fields and inputs of one tool invocation (picklable)."""

    name: str
    fields: tuple[tuple[str, str, int], ...]
    """(key, template, encoding) per field; templates may hold ``{{secret:$N}}`` slots."""
    inputs: tuple[tuple[str, str], ...] = ()
    tool: str = ""

    @property
    def slots(self) -> int:
        """The highest slot number used (0: the templates name no slot)."""
        numbers = [int(m.group("slot")) for _, t, _ in self.fields for m in _SLOT.finditer(t)]
        return max(numbers, default=0)


SEED_SCENARIO = Scenario(
    name="seed",
    fields=(
        (
            "url",
            "https://api.example.com/orders/{{input.order_id}}?key={{secret:$1}}",
            resolver_pb.ENCODING_URL,
        ),
        ("header:Authorization", "Bearer {{secret:$2}}", resolver_pb.ENCODING_HEADER),
        (
            "body",
            '{ "api_key": "{{secret:$3}}", "order_id": "{{input.order_id}}" }',
            resolver_pb.ENCODING_JSON,
        ),
    ),
    inputs=(("order_id", "42"),),
)
"""The product page's three examples in one tool call: URL, header and JSON body."""


def load_template_file(path: str) -> Scenario:
    """Reads ``--template-file``: the vaultctl check/resolve JSON form, with slots allowed."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise LoadUsageError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_TEMPLATE_FILE_BYTES:
        raise LoadUsageError(f"{path} is larger than {MAX_TEMPLATE_FILE_BYTES} bytes")
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LoadUsageError(f"{path} is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise LoadUsageError(
            f"{path} is not valid JSON (line {exc.lineno} column {exc.colno})"
        ) from None
    return parse_template_document(document, path)


def parse_template_document(document: object, source: str) -> Scenario:
    if not isinstance(document, dict):
        raise LoadUsageError(f"{source}: expected a JSON object")
    inputs: dict[str, str] = {}
    tool = ""
    raw_fields: object
    if "fields" in document:
        unknown = set(document) - {"fields", "inputs", "tool"}
        if unknown:
            listed = ", ".join(sorted(unknown))
            raise LoadUsageError(f"{source}: unknown top-level key(s): {listed}")
        raw_fields = document["fields"]
        if not isinstance(raw_fields, list) or not all(isinstance(f, dict) for f in raw_fields):
            raise LoadUsageError(f"{source}: fields must be a list of objects")
        raw_inputs = document.get("inputs", {})
        if not isinstance(raw_inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_inputs.items()
        ):
            raise LoadUsageError(f"{source}: inputs must be an object of strings")
        inputs = dict(raw_inputs)
        raw_tool = document.get("tool", "")
        if not isinstance(raw_tool, str):
            raise LoadUsageError(f"{source}: tool must be a string")
        tool = raw_tool
    elif document and all(isinstance(v, str) for v in document.values()):
        raw_fields = {str(k): v for k, v in document.items()}
    else:
        raise LoadUsageError(
            f'{source}: expected {{"fields": [...]}} or an object mapping keys to templates'
        )
    try:
        fields = template_fields(raw_fields)
    except (ValueError, TypeError) as exc:
        raise LoadUsageError(f"{source}: {exc}") from None
    if not fields:
        raise LoadUsageError(f"{source}: no fields")
    return Scenario(
        name=source,
        fields=tuple((f.key, f.template, int(f.encoding)) for f in fields),
        inputs=tuple(inputs.items()),
        tool=tool,
    )


class RequestFactory:
    """Builds the ResolveTemplate requests of a run.

    ``same``: one request, built once, reused for every call. ``random``: each
    call draws ``slots`` names from the pool (distinct when the pool is large
    enough) and fills precomputed template pieces.
    """

    def __init__(
        self,
        scenario: Scenario,
        pool: Sequence[str],
        names: NamesMode,
        tool: str,
        rng: random.Random | None = None,
    ) -> None:
        self._slots = scenario.slots
        if self._slots and not pool:
            raise LoadUsageError(
                f"the scenario {scenario.name} names {self._slots} secret slot(s) "
                "({{secret:$1}}...): give --seed-secrets N or --secret NAME"
            )
        self._pool = list(pool)
        self._random = names == "random" and self._slots > 0
        self._rng = rng or random.Random()
        self._inputs: Mapping[str, str] = dict(scenario.inputs)
        self._tool = scenario.tool or tool
        # Per field: the literal pieces between slots, and the slot index (0-based) after each.
        self._pieces: list[tuple[str, list[str], list[int], int]] = []
        for key, template, encoding in scenario.fields:
            texts: list[str] = []
            slots: list[int] = []
            position = 0
            for match in _SLOT.finditer(template):
                texts.append(template[position : match.start()])
                slots.append(int(match.group("slot")) - 1)
                position = match.end()
            texts.append(template[position:])
            self._pieces.append((key, texts, slots, encoding))
        self._fixed = self._build(self._same_names())

    @property
    def slots(self) -> int:
        return self._slots

    def _same_names(self) -> list[str]:
        if not self._slots:
            return []
        return [self._pool[i % len(self._pool)] for i in range(self._slots)]

    def _draw(self) -> list[str]:
        if len(self._pool) >= self._slots:
            return self._rng.sample(self._pool, self._slots)
        return self._rng.choices(self._pool, k=self._slots)

    def _build(self, names: Sequence[str]) -> resolver_pb.ResolveTemplateRequest:
        fields = []
        for key, texts, slots, encoding in self._pieces:
            parts = [texts[0]]
            for slot, text in zip(slots, texts[1:], strict=True):
                parts.append("{{secret:" + names[slot] + "}}")
                parts.append(text)
            fields.append(
                resolver_pb.TemplateField(
                    key=key,
                    template="".join(parts),
                    encoding=encoding,  # type: ignore[arg-type]
                )
            )
        return resolver_pb.ResolveTemplateRequest(
            fields=fields, inputs=self._inputs, tool=self._tool
        )

    def next(self) -> resolver_pb.ResolveTemplateRequest:
        """The request for the next call."""
        if self._random:
            return self._build(self._draw())
        return self._fixed
