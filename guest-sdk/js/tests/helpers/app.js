// Exercises every helper of sluice.js; guest-sdk/tests/helpers holds the
// fixtures that this and the Python twin must both pass.

import * as sluice from './sluice.js';
export { init, apply } from './sluice.js';

sluice.product((p, event, config) => {
  if (p.skip) return sluice.skip('skipped by request');
  const problems = new sluice.Violations();
  problems.require(p, 'sku');
  const title = problems.require(p, 'title');
  if (problems.length) return problems;
  p.title = sluice.truncate(sluice.stripHtml(title), config['max-title']);
  if (p.weight) {
    let kg;
    try {
      kg = sluice.convert(p.weight.value, p.weight.unit, 'kg');
    } catch (err) {
      return sluice.reject(sluice.path('weight', 'unit'), 'unknown-unit', err.message);
    }
    p.weight = { value: kg, unit: 'kg' };
    p.grams = sluice.convert(kg, 'kg', 'g');
  }
  if (p.price) p.price = sluice.money(p.price.amount, p.price.currency);
  p['quoted-path'] = sluice.path("it's", 0);
  sluice.log(`product ${p.sku}`);
  return sluice.emit(event, p);
});

sluice.event('price', (p, event) => sluice.emit(event, sluice.money(p.amount, p.currency), { note: 'second' }));

// Any request is denied by the host: this event fails alone.
sluice.event('fetch', (p) => {
  fetch(p.url);
});
