// changed-fields, in JavaScript: the same transform as the Rust crate
// `transforms/changed-fields`, passing the same fixtures.
//
// Sends only what changed: the first record of a key goes out whole; each
// later one only with the top-level fields whose values differ from the
// last one sent (and the key). A record equal to the last one is dropped.
// A record marked discontinued (`active: false`) is delivered as a DELETE
// and its key forgotten. With a `lookup`, a field is added from a lookup
// table, and the destination URL's `{param:FIELD}` takes the looked-up value.

import * as sluice from './sluice.js';

const same = (a, b) => sluice.stringify(a) === sluice.stringify(b);

sluice.product((record, event, config) => {
  const keyField = config.key ?? 'sku';
  const key = record[keyField];
  if (typeof key !== 'string' || !key) {
    return sluice.reject(sluice.path(keyField), 'required', `\`${keyField}\` must be a non-empty string`);
  }
  const lookup = config.lookup;
  let lookedUp;
  if (lookup) {
    const value = sluice.lookup(lookup.table, key);
    if (value === undefined) {
      return sluice.reject(sluice.path(keyField), 'unknown-key', `\`${key}\` is not in lookup table \`${lookup.table}\``);
    }
    record[lookup.field] = value;
    lookedUp = typeof value === 'string' ? value : undefined;
  }
  const hinted = (outcome) =>
    lookup && lookedUp !== undefined ? sluice.withParam(outcome, lookup.field, lookedUp) : outcome;

  const stateKey = `last:${key}`;
  if (record.active === false) {
    sluice.state.delete(stateKey);
    return hinted(sluice.deliverAs(sluice.emit(event, { [keyField]: key }), 'delete'));
  }
  const last = sluice.state.get(stateKey);
  let out;
  if (last === undefined) {
    out = { ...record };
  } else {
    out = Object.fromEntries(
      Object.entries(record).filter(([field, value]) => !(field in last) || !same(last[field], value)),
    );
    if (Object.keys(out).length === 0) return sluice.skip('nothing changed since the last record sent');
    out[keyField] = key;
  }
  sluice.state.set(stateKey, record);
  return hinted(sluice.emit(event, out));
});
