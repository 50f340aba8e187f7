"""Write Sluice transforms in Python.

Register a function per event kind, return an outcome, and let this module
speak the component contract (`sluice:transform@0.2.0`, `wit/v0.2/`)::

    import sluice

    @sluice.product
    def product(p: sluice.Product, event: sluice.Event, config: dict):
        if not p.get("title"):
            return sluice.reject(sluice.path("title"), "required", "title is required")
        p["title"] = sluice.truncate(p["title"], config.get("max-title", 80))
        return sluice.emit(event, p)

    WitWorld = sluice.WitWorld

Events of a kind with no function pass through unchanged. A function may
return `emit(...)`, `skip(reason)`, `reject(...)`, a `Violations` list, or
None (the event passes unchanged). A function may keep state across
batches (`state.get`, `state.set`, `state.delete`: JSON values), read
lookup tables (`lookup(table, key)`), read the source's topic and headers
(`event.topic`, `header(event, name)`), choose how an emitted event is
delivered (`deliver_as`, `with_param`), and leave out part of an input
(`leave_out`, `partial`). Written by `sluice new`; `sluice build` keeps it
up to date: do not edit.
"""

import json
import unicodedata
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from html.parser import HTMLParser
from typing import Any, Callable, Dict, List, Optional, TypedDict, Union

from componentize_py_types import Err
from wit_world.imports import host, types
from wit_world.imports import lookup as _lookup
from wit_world.imports import state as _state

Event = types.Event

# --- The canonical shapes (JSON objects; every field optional) ----------


class Money(TypedDict, total=False):
    amount: str  # an exact decimal, as text: "9.99"
    currency: str  # ISO 4217: "USD"


class Measure(TypedDict, total=False):
    value: str
    unit: str  # "kg", "lb", "cm", "in", ...


class Product(TypedDict, total=False):
    id: str
    group_id: str
    sku: str
    title: str
    description: str
    brand: str
    gtin: str
    active: bool
    price: Money
    quantity: Union[int, str]
    weight: Measure
    dimensions: Dict[str, Any]  # length, width, height, unit
    images: List[str]
    categories: List[str]
    variants: List["Product"]


class InventoryEvent(TypedDict, total=False):
    sku: str
    item_id: str
    location: str
    available: Union[int, str]
    updated_at: str


# --- Outcomes -------------------------------------------------------------


def path(*segments: Union[str, int]) -> str:
    """The RFC 9535 normalized path of a payload field: path("price", "amount") is $['price']['amount']."""
    out = "$"
    for segment in segments:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            escaped = segment.replace("\\", "\\\\").replace("'", "\\'")
            out += f"['{escaped}']"
    return out


def emit(event: Event, *payloads: Any) -> types.Outcome:
    """Deliver the event with each payload (one event per payload, ids suffixed after the first)."""
    events = []
    for index, payload in enumerate(payloads):
        event_id = event.id if index == 0 else f"{event.id}-{index}"
        events.append(
            types.Event(
                event_id,
                event.kind,
                event.tenant,
                event.channel,
                event.source,
                event.correlation_id,
                _dump(payload),
                event.topic,
                event.headers,
                event.delivery,
            )
        )
    return types.Outcome_Emit(events)


def skip(reason: str) -> types.Outcome:
    """Deliver nothing for this event, for a reason the operator sees."""
    return types.Outcome_Drop(reason)


def reject(at: str, code: str, message: str) -> types.Outcome:
    """Refuse the event: one violation at a JSON path (see `path`)."""
    return types.Outcome_Reject([types.Violation(at, code, message)])


def partial(outcome: types.Outcome, violations: List[types.Violation]) -> types.Outcome:
    """Send the events of `outcome` (an emit) on, and reject the rest of the input with `violations`."""
    if not violations:
        return outcome
    return types.Outcome_Partial(types.Partial(list(_emitted(outcome)), list(violations)))


def leave_out(violations: List[types.Violation]) -> types.Outcome:
    """Leave this event out of its input's delivery; its siblings go on."""
    if not violations:
        raise ValueError("leave_out needs at least one violation")
    return types.Outcome_Partial(types.Partial([], list(violations)))


def _emitted(outcome: types.Outcome) -> List[Event]:
    if isinstance(outcome, types.Outcome_Partial):
        return outcome.value.emit
    if isinstance(outcome, types.Outcome_Emit):
        return outcome.value
    return []


_METHODS = {"post": types.Method.POST, "put": types.Method.PUT, "patch": types.Method.PATCH, "delete": types.Method.DELETE}


def deliver_as(outcome: types.Outcome, method: str) -> types.Outcome:
    """The outcome, its events delivered with `method` ("post", "put", "patch" or "delete")."""
    for event in _emitted(outcome):
        params = event.delivery.params if event.delivery else []
        event.delivery = types.DeliveryHint(_METHODS[method.lower()], params)
    return outcome


def with_param(outcome: types.Outcome, name: str, value: Any) -> types.Outcome:
    """The outcome, its events' URL `{param:NAME}` set to `value`."""
    for event in _emitted(outcome):
        method = event.delivery.method if event.delivery else None
        params = [(k, v) for (k, v) in (event.delivery.params if event.delivery else []) if k != name]
        params.append((name, str(value)))
        event.delivery = types.DeliveryHint(method, params)
    return outcome


def header(event: Event, name: str) -> Optional[str]:
    """A header the source kept (`x-shopify-shop-domain`), or None."""
    wanted = name.lower()
    for key, value in event.headers:
        if key.lower() == wanted:
            return value
    return None


class state:
    """State that lasts across batches, per tenant, channel and step: JSON values."""

    @staticmethod
    def get(key: str) -> Any:
        """The value under `key`, or None."""
        text = _state.get(key)
        return None if text is None else json.loads(text)

    @staticmethod
    def set(key: str, value: Any) -> bool:
        """Stores `value` (as JSON) under `key`; False if the host refused it (a cap)."""
        try:
            _state.set(key, _dump(value))
            return True
        except Err as refused:
            log(f"state.set refused: {refused.value}", "warn")
            return False

    @staticmethod
    def delete(key: str) -> None:
        """Forgets `key`."""
        _state.delete(key)


def lookup(table: str, key: str) -> Any:
    """The value of `key` in lookup table `table`, or None."""
    text = _lookup.get(table, key)
    return None if text is None else json.loads(text)


class Violations(list):
    """Every problem of one event, to reject it with all of them at once."""

    def add(self, at: str, code: str, message: str) -> None:
        self.append(types.Violation(at, code, message))

    def require(self, payload: dict, *segments: Union[str, int]) -> Any:
        """The value at `segments`, or None with a `required` violation there."""
        value: Any = payload
        for segment in segments:
            try:
                value = value[segment]
            except (KeyError, IndexError, TypeError):
                value = None
                break
        if value is None or value == "":
            self.add(path(*segments), "required", f"{'.'.join(map(str, segments))} is required")
        return value


def log(message: str, level: str = "info") -> None:
    """One line in the event's log (debug, info, warn or error)."""
    host.log(getattr(host.LogLevel, level.upper(), host.LogLevel.INFO), message)


# --- Helpers, as in the Rust SDK ---------------------------------------------


def _joins(char: str) -> bool:
    """Whether a code point belongs to the character before it: a mark, a
    joiner, a variation selector, a skin tone or an emoji tag."""
    point = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Mc", "Me")
        or point in (0x200C, 0x200D)
        or 0xFE00 <= point <= 0xFE0F
        or 0x1F3FB <= point <= 0x1F3FF
        or 0xE0020 <= point <= 0xE007F
    )


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters, never splitting one; an ellipsis marks a cut."""
    clusters: List[str] = []
    for char in text:
        joins = clusters and (_joins(char) or clusters[-1].endswith("\u200d"))
        if joins:
            clusters[-1] += char
        else:
            clusters.append(char)
    if len(clusters) <= limit:
        return text
    if limit == 0:
        return ""
    return "".join(clusters[: limit - 1]).rstrip() + "\u2026"


_BLOCK = set(
    "address article blockquote br dd div dl dt figcaption footer h1 h2 h3 h4 h5 h6 header hr li ol p pre "
    "section table td th tr ul".split()
)
_HIDDEN = {"script", "style", "head", "template"}


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: List[str] = []
        self.hidden: Optional[str] = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if self.hidden:
            return
        if tag in _HIDDEN:
            self.hidden = tag
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        if not self.hidden and tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.hidden:
            if tag == self.hidden:
                self.hidden = None
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def strip_html(markup: str) -> str:
    """Plain text: tags removed (block tags become line breaks), entities decoded, blank lines dropped."""
    parser = _Text()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts).replace("\xa0", " ")
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


_UNITS = {}
for _symbol, _dimension, _base, _spellings in [
    ("mg", "mass", "0.001", "mg milligram milligrams"),
    ("g", "mass", "1", "g gr gram grams gramme grammes"),
    ("kg", "mass", "1000", "kg kgs kilo kilos kilogram kilograms"),
    ("oz", "mass", "28.349523125", "oz ozs ounce ounces"),
    ("lb", "mass", "453.59237", "lb lbs lb. lbs. pound pounds #"),
    ("mm", "length", "1", "mm millimeter millimeters millimetre millimetres"),
    ("cm", "length", "10", "cm cms centimeter centimeters centimetre centimetres"),
    ("m", "length", "1000", "m meter meters metre metres"),
    ("in", "length", "25.4", 'in in. inch inches " \u2033'),
    ("ft", "length", "304.8", "ft ft. foot feet ' \u2032"),
    ("ml", "volume", "1", "ml millilitre milliliter millilitres milliliters"),
    ("l", "volume", "1000", "l lt ltr litre liter litres liters"),
    ("fl oz", "volume", "29.5735295625", "floz fl.oz"),
    ("gal", "volume", "3785.411784", "gal gallon gallons"),
]:
    for _spelling in _spellings.split() + [_symbol]:
        _UNITS[_spelling] = (_symbol, _dimension, Decimal(_base))
for _spelling in ("fl oz", "fl. oz.", "fluid ounce", "fluid ounces"):
    _UNITS[_spelling] = _UNITS["fl oz"]


def decimal(value: Any) -> Decimal:
    """An exact Decimal from a JSON number or numeric text ("9.99", 9.99, 10)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = Decimal(value if isinstance(value, (str, int, Decimal)) else repr(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a number")
    return number


def _plain(number: Decimal) -> Decimal:
    """Without an exponent: 2E+3 is 2000, 1.50 is 1.5."""
    number = number.normalize()
    return number.quantize(Decimal(1)) if number.as_tuple().exponent > 0 else number


def convert(value: Any, from_unit: str, to_unit: str) -> Decimal:
    """Exact unit conversion (1 lb = 0.45359237 kg): convert("2", "lbs", "kg") is Decimal("0.90718474")."""
    units = []
    for unit in (from_unit, to_unit):
        found = _UNITS.get(unit.strip().lower()) if isinstance(unit, str) else None
        if found is None:
            raise ValueError(f"unknown unit {unit!r}")
        units.append(found)
    source, target = units
    if source[1] != target[1]:
        raise ValueError(f"cannot convert {source[1]} ({from_unit}) to {target[1]} ({to_unit})")
    try:
        return _plain(decimal(value) * source[2] / target[2])
    except InvalidOperation:
        raise ValueError(f"{value!r} is out of range") from None


_MINOR = {"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3, "CLF": 4, "UYW": 4}
_MINOR.update(dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0))


def money(amount: Any, currency: str) -> Money:
    """An exact amount rounded half away from zero to the currency's minor units: money("9.995", "USD")."""
    if not isinstance(currency, str):
        raise ValueError(f"{currency!r} is not a currency code")
    places = _MINOR.get(currency.upper(), 2)
    try:
        rounded = decimal(amount).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    except InvalidOperation:
        raise ValueError(f"{amount!r} is out of range") from None
    if rounded.is_zero():
        rounded = abs(rounded)
    return {"amount": str(rounded), "currency": currency.upper()}


# --- The contract -----------------------------------------------------------

_handlers: Dict[str, Callable[..., Any]] = {}
_config: dict = {}


def product(handler: Callable[[Product, Event, dict], Any]) -> Callable[..., Any]:
    """Registers the function for `product` events."""
    _handlers["product"] = handler
    return handler


def inventory(handler: Callable[[InventoryEvent, Event, dict], Any]) -> Callable[..., Any]:
    """Registers the function for `inventory` events."""
    _handlers["inventory"] = handler
    return handler


def event(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers a function for events of any other kind: @sluice.event("price")."""

    def register(handler: Callable[..., Any]) -> Callable[..., Any]:
        _handlers[kind] = handler
        return handler

    return register


def _kind(event: Event) -> str:
    return event.kind.value if isinstance(event.kind, types.EventKind_Other) else type(event.kind).__name__[10:].lower()


def _dump(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


def _one(event: Event) -> types.Outcome:
    handler = _handlers.get(_kind(event))
    if handler is None:
        return types.Outcome_Emit([event])
    try:
        payload = json.loads(event.payload)
    except ValueError as err:
        return reject("$", "invalid-json", f"the payload is not JSON: {err}")
    result = handler(payload, event, _config)
    if result is None:
        return types.Outcome_Emit([event])
    if isinstance(result, Violations):
        return types.Outcome_Reject(list(result)) if result else types.Outcome_Emit([event])
    return result


class Step:
    """The component's exports (the contract's `step` interface); `sluice build` exports it for you."""

    def init(self, config: str) -> None:
        global _config
        try:
            _config = json.loads(config)
        except ValueError as err:
            raise Err(f"the config is not JSON: {err}")

    def apply(self, batch: List[Event]) -> List[types.Outcome]:
        return [_one(event) for event in batch]


# Modules written for the first contract assign `WitWorld = sluice.WitWorld`.
WitWorld = Step
