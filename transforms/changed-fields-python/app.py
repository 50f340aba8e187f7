"""changed-fields, in Python: the same transform as the Rust crate
`transforms/changed-fields`, passing the same fixtures.

Sends only what changed: the first record of a key goes out whole; each
later one only with the top-level fields whose values differ from the last
one sent (and the key). A record equal to the last one is dropped. A record
marked discontinued (`active: false`) is delivered as a DELETE and its key
forgotten. With a `lookup`, a field is added from a lookup table, and the
destination URL's `{param:FIELD}` takes the looked-up value.
"""

import json

import sluice


def _same(a, b) -> bool:
    # Strictly as JSON: in Python 1 == True, which JSON keeps apart.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@sluice.product
def changed(record: dict, event: sluice.Event, config: dict):
    key_field = config.get("key", "sku")
    key = record.get(key_field)
    if not isinstance(key, str) or not key:
        return sluice.reject(sluice.path(key_field), "required", f"`{key_field}` must be a non-empty string")
    lookup = config.get("lookup")
    looked_up = None
    if lookup:
        value = sluice.lookup(lookup["table"], key)
        if value is None:
            return sluice.reject(
                sluice.path(key_field), "unknown-key", f"`{key}` is not in lookup table `{lookup['table']}`"
            )
        record[lookup["field"]] = value
        looked_up = value if isinstance(value, str) else None

    def hinted(outcome):
        if lookup and looked_up is not None:
            return sluice.with_param(outcome, lookup["field"], looked_up)
        return outcome

    state_key = f"last:{key}"
    if record.get("active") is False:
        sluice.state.delete(state_key)
        return hinted(sluice.deliver_as(sluice.emit(event, {key_field: key}), "delete"))
    last = sluice.state.get(state_key)
    if last is None:
        out = dict(record)
    else:
        out = {field: value for field, value in record.items() if field not in last or not _same(last[field], value)}
        if not out:
            return sluice.skip("nothing changed since the last record sent")
        out[key_field] = key
    sluice.state.set(state_key, record)
    return hinted(sluice.emit(event, out))
