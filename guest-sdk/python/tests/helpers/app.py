"""Exercises every helper of sluice.py; guest-sdk/tests/helpers holds the
fixtures that this and the JavaScript twin must both pass."""

import sluice


@sluice.product
def product(p: sluice.Product, event: sluice.Event, config: dict):
    if p.get("skip"):
        return sluice.skip("skipped by request")
    problems = sluice.Violations()
    problems.require(p, "sku")
    title = problems.require(p, "title")
    if problems:
        return problems
    p["title"] = sluice.truncate(sluice.strip_html(title), config["max-title"])
    if "weight" in p:
        try:
            kg = sluice.convert(p["weight"]["value"], p["weight"]["unit"], "kg")
        except ValueError as err:
            return sluice.reject(sluice.path("weight", "unit"), "unknown-unit", str(err))
        p["weight"] = {"value": str(kg), "unit": "kg"}
        p["grams"] = str(sluice.convert(kg, "kg", "g"))
    if "price" in p:
        p["price"] = sluice.money(p["price"]["amount"], p["price"]["currency"])
    p["quoted-path"] = sluice.path("it's", 0)
    sluice.log("product " + p["sku"])
    return sluice.emit(event, p)


@sluice.event("price")
def price(p: dict, event: sluice.Event, config: dict):
    return sluice.emit(event, sluice.money(p["amount"], p["currency"]), {"note": "second"})


WitWorld = sluice.WitWorld
