// Write Sluice transforms in JavaScript.
//
// Register a function per event kind, return an outcome, and let this module
// speak the component contract (sluice:transform@0.2.0, wit/v0.2/):
//
//   import * as sluice from './sluice.js';
//   export { init, apply } from './sluice.js';
//
//   sluice.product((p, event, config) => {
//     if (!p.title) return sluice.reject(sluice.path('title'), 'required', 'title is required');
//     p.title = sluice.truncate(p.title, config['max-title'] ?? 80);
//     return sluice.emit(event, p);
//   });
//
// Payloads are parsed so that integers beyond 2^53 (Shopify's ids) arrive
// as BigInt, never rounded, and are written back as the same digits.
// Events of a kind with no function pass through unchanged. A function may
// return emit(...), skip(reason), reject(...), a Violations, or nothing
// (the event passes unchanged). A function may keep state across batches
// (state.get, state.set, state.delete: JSON values), read lookup tables
// (lookup(table, key)), read the source's topic and headers (event.topic,
// header(event, name)), choose how an emitted event is delivered
// (deliverAs, withParam), and leave out part of an input (leaveOut,
// partial). Written by `sluice new`; `sluice build` keeps it up to date:
// do not edit.

import { log as hostLog } from 'sluice:transform/host@0.2.0';
import { get as stateGet, set as stateSet, delete as stateDelete } from 'sluice:transform/state@0.2.0';
import { get as lookupGet } from 'sluice:transform/lookup@0.2.0';

// --- JSON that keeps 64-bit integers ------------------------------------------

/** Parses JSON; integers that a Number cannot hold exactly become BigInt. */
export function parse(text) {
  let i = 0;
  const fail = (what) => {
    throw new SyntaxError(`${what} at character ${i}`);
  };
  const space = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const number = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
  function string() {
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i >= text.length) fail('unterminated string');
    i++;
    return JSON.parse(text.slice(start, i));
  }
  function value() {
    space();
    const c = text[i];
    if (c === '{' || c === '[') {
      i++;
      const array = c === '[';
      const out = array ? [] : {};
      space();
      if (text[i] === (array ? ']' : '}')) {
        i++;
        return out;
      }
      for (;;) {
        if (array) {
          out.push(value());
        } else {
          space();
          if (text[i] !== '"') fail('expected a member name');
          const key = string();
          space();
          if (text[i++] !== ':') fail("expected ':'");
          // Own properties only, whatever the name (`__proto__` included).
          Object.defineProperty(out, key, { value: value(), enumerable: true, writable: true, configurable: true });
        }
        space();
        const next = text[i++];
        if (next === (array ? ']' : '}')) return out;
        if (next !== ',') fail(`expected ',' or '${array ? ']' : '}'}'`);
      }
    }
    if (c === '"') return string();
    number.lastIndex = i;
    const found = number.exec(text);
    if (found) {
      i = number.lastIndex;
      const n = Number(found[0]);
      return found[1] || found[2] || Number.isSafeInteger(n) ? n : BigInt(found[0]);
    }
    for (const [word, literal] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return literal;
      }
    }
    return fail(c === undefined ? 'unexpected end' : `unexpected '${c}'`);
  }
  const result = value();
  space();
  if (i !== text.length) fail('unexpected text after the value');
  return result;
}

/** JSON text of a value; a BigInt is written as its digits. */
export function stringify(value) {
  if (typeof value === 'bigint') return value.toString();
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (typeof value.toJSON === 'function') return stringify(value.toJSON());
  const skip = (v) => v === undefined || typeof v === 'function' || typeof v === 'symbol';
  if (Array.isArray(value)) return `[${value.map((v) => (skip(v) ? 'null' : stringify(v))).join(',')}]`;
  const members = Object.entries(value).filter(([, v]) => !skip(v));
  return `{${members.map(([k, v]) => `${JSON.stringify(k)}:${stringify(v)}`).join(',')}}`;
}

// --- Outcomes -------------------------------------------------------------------

/** The RFC 9535 normalized path of a payload field: path('price', 'amount') is $['price']['amount']. */
export function path(...segments) {
  return segments
    .map((s) => (typeof s === 'number' ? `[${s}]` : `['${String(s).replace(/\\/g, '\\\\').replace(/'/g, "\\'")}']`))
    .reduce((out, s) => out + s, '$');
}

/** Deliver the event with each payload (one event per payload, ids suffixed after the first). */
export function emit(event, ...payloads) {
  const events = payloads.map((payload, index) => ({
    ...event,
    id: index === 0 ? event.id : `${event.id}-${index}`,
    payload: stringify(payload),
  }));
  return { tag: 'emit', val: events };
}

/** Deliver nothing for this event, for a reason the operator sees. */
export function skip(reason) {
  return { tag: 'drop', val: String(reason) };
}

/** Refuse the event: one violation at a JSON path (see path). */
export function reject(at, code, message) {
  return { tag: 'reject', val: [{ path: at, code, message }] };
}

/** Send these events on and reject the rest of the input with these violations. */
export function partial(events, violations) {
  if (!violations.length) return { tag: 'emit', val: events };
  return { tag: 'partial', val: { emit: events, reject: [...violations] } };
}

/** Leave this event out of its input's delivery; its siblings go on. */
export function leaveOut(violations) {
  if (!violations.length) throw new Error('leaveOut needs at least one violation');
  return { tag: 'partial', val: { emit: [], reject: [...violations] } };
}

/** The emitted events of an outcome (emit or partial), to give them hints. */
function emitted(outcome) {
  if (outcome?.tag === 'partial') return outcome.val.emit;
  if (outcome?.tag === 'emit') return outcome.val;
  return [];
}

/** The outcome, its events delivered with `method` ('post', 'put', 'patch', 'delete'). */
export function deliverAs(outcome, method) {
  const chosen = String(method).toLowerCase();
  if (!['post', 'put', 'patch', 'delete'].includes(chosen)) {
    throw new Error(`deliverAs: \`${method}\` is not post, put, patch or delete`);
  }
  for (const event of emitted(outcome)) {
    event.delivery = { method: chosen, params: event.delivery?.params ?? [] };
  }
  return outcome;
}

/** The outcome, its events' URL `{param:NAME}` set to `value`. */
export function withParam(outcome, name, value) {
  for (const event of emitted(outcome)) {
    const params = (event.delivery?.params ?? []).filter(([key]) => key !== name);
    params.push([name, String(value)]);
    event.delivery = { method: event.delivery?.method, params };
  }
  return outcome;
}

/** A header the source kept (`x-shopify-shop-domain`), or undefined. */
export function header(event, name) {
  const wanted = name.toLowerCase();
  const found = (event.headers ?? []).find(([key]) => key.toLowerCase() === wanted);
  return found ? found[1] : undefined;
}

/** State that lasts across batches, per tenant, channel and step: JSON values. */
export const state = {
  /** The value under `key`, or undefined. */
  get(key) {
    const text = stateGet(key);
    return text === undefined || text === null ? undefined : parse(text);
  },
  /** Stores `value` (as JSON) under `key`; false if the host refused it (a cap). */
  set(key, value) {
    const text = stringify(value);
    try {
      stateSet(key, text);
      return true;
    } catch (err) {
      // Only the host's refusal (a component error with its reason) is an answer.
      if (err?.payload === undefined) throw err;
      log(`state.set refused: ${JSON.stringify(err.payload)}`, 'warn');
      return false;
    }
  },
  /** Forgets `key`. */
  delete(key) {
    stateDelete(key);
  },
};

/** The value of `key` in lookup table `table`, or undefined. */
export function lookup(table, key) {
  const text = lookupGet(table, key);
  return text === undefined || text === null ? undefined : parse(text);
}

/** Every problem of one event, to reject it with all of them at once. */
export class Violations extends Array {
  add(at, code, message) {
    this.push({ path: at, code, message });
  }

  /** The value at the segments, or undefined with a `required` violation there. */
  require(payload, ...segments) {
    let value = payload;
    for (const s of segments) value = value == null ? undefined : value[s];
    if (value === undefined || value === null || value === '') {
      this.add(path(...segments), 'required', `${segments.join('.')} is required`);
    }
    return value;
  }
}

/** One line in the event's log: 'debug', 'info', 'warn' or 'error'. */
export function log(message, level = 'info') {
  hostLog(level, String(message));
}

// --- Helpers, as in the Rust SDK ------------------------------------------------------

// Code points that belong to the character before them: combining marks,
// joiners, variation selectors and skin tones (the runtime has no \p{M}).
const JOINS = /^[\u0300-\u036f\u0483-\u0489\u0591-\u05bd\u0610-\u061a\u064b-\u065f\u0900-\u0903\u093a-\u094f\u1ab0-\u1aff\u1dc0-\u1dff\u200c\u200d\u20d0-\u20ff\ufe00-\ufe0f\ufe20-\ufe2f\u{1f3fb}-\u{1f3ff}\u{e0020}-\u{e007f}]$/u;

/** At most `limit` characters, never splitting one; an ellipsis marks a cut. */
export function truncate(text, limit) {
  const clusters = [];
  for (const char of String(text)) {
    const joins =
      clusters.length > 0 &&
      (JOINS.test(char) || clusters[clusters.length - 1].endsWith('\u200d'));
    if (joins) clusters[clusters.length - 1] += char;
    else clusters.push(char);
  }
  if (clusters.length <= limit) return String(text);
  if (limit <= 0) return '';
  return `${clusters.slice(0, limit - 1).join('').trimEnd()}\u2026`;
}

const BLOCK = new Set(
  ('address article blockquote br dd div dl dt figcaption footer h1 h2 h3 h4 h5 h6 header hr li ol p pre ' +
    'section table td th tr ul').split(' '),
);
const HIDDEN = new Set(['script', 'style', 'head', 'template']);
const ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'", nbsp: ' ', hellip: '\u2026', mdash: '\u2014', ndash: '\u2013', copy: '\u00a9', reg: '\u00ae', trade: '\u2122', eacute: '\u00e9', egrave: '\u00e8', uuml: '\u00fc', ouml: '\u00f6', auml: '\u00e4', szlig: '\u00df' };

/** Plain text: tags removed (block tags become line breaks), entities decoded, blank lines dropped. */
export function stripHtml(markup) {
  let text = '';
  let hidden = null;
  const tag = /<(\/?)([a-zA-Z][a-zA-Z0-9]*)(?:"[^"]*"|'[^']*'|[^'">])*>|<![^>]*>|<\?[^>]*>/g;
  let last = 0;
  for (const m of String(markup).matchAll(tag)) {
    if (!hidden) text += markup.slice(last, m.index);
    last = m.index + m[0].length;
    const name = (m[2] || '').toLowerCase();
    if (hidden) {
      if (m[1] && name === hidden) hidden = null;
    } else if (!m[1] && HIDDEN.has(name) && !m[0].endsWith('/>')) {
      hidden = name;
    } else if (BLOCK.has(name)) {
      text += '\n';
    }
  }
  if (!hidden) text += markup.slice(last);
  const decoded = text.replace(/&(#x[0-9a-fA-F]+|#\d+|[a-zA-Z]+);/g, (whole, ref) => {
    if (ref[0] === '#') {
      const code = ref[1] === 'x' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    }
    return ENTITIES[ref] ?? whole;
  });
  return decoded
    .replace(/\u00a0/g, ' ')
    .split('\n')
    .map((line) => line.split(/[ \t\r\f]+/).filter(Boolean).join(' '))
    .filter(Boolean)
    .join('\n');
}

// Exact decimals as [BigInt digits, scale]: "9.995" is [9995n, 3].
function decimal(value) {
  const text = typeof value === 'bigint' ? value.toString() : String(value).trim();
  const m = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(text);
  if (!m || (m[2] + (m[3] ?? '')).length === 0) throw new RangeError(`${JSON.stringify(text)} is not a number`);
  let digits = BigInt(`${m[1]}${m[2]}${m[3] ?? ''}` || '0');
  let scale = (m[3] ?? '').length - Number(m[4] ?? 0);
  if (scale < 0) {
    digits *= 10n ** BigInt(-scale);
    scale = 0;
  }
  return [digits, scale];
}

/** numerator / denominator (> 0), rounded half away from zero. */
function divideRounded(numerator, denominator) {
  const quotient = numerator / denominator;
  const remainder = numerator % denominator;
  if ((remainder < 0n ? -remainder : remainder) * 2n >= denominator) return quotient + (numerator < 0n ? -1n : 1n);
  return quotient;
}

function decimalText(digits, scale) {
  const negative = digits < 0n;
  let text = (negative ? -digits : digits).toString().padStart(scale + 1, '0');
  if (scale > 0) text = `${text.slice(0, -scale)}.${text.slice(-scale)}`;
  return (negative ? '-' : '') + text;
}

const UNITS = {};
for (const [symbol, dimension, base, spellings] of [
  ['mg', 'mass', '0.001', 'mg milligram milligrams'],
  ['g', 'mass', '1', 'g gr gram grams gramme grammes'],
  ['kg', 'mass', '1000', 'kg kgs kilo kilos kilogram kilograms'],
  ['oz', 'mass', '28.349523125', 'oz ozs ounce ounces'],
  ['lb', 'mass', '453.59237', 'lb lbs lb. lbs. pound pounds #'],
  ['mm', 'length', '1', 'mm millimeter millimeters millimetre millimetres'],
  ['cm', 'length', '10', 'cm cms centimeter centimeters centimetre centimetres'],
  ['m', 'length', '1000', 'm meter meters metre metres'],
  ['in', 'length', '25.4', 'in in. inch inches " \u2033'],
  ['ft', 'length', '304.8', "ft ft. foot feet ' \u2032"],
  ['ml', 'volume', '1', 'ml millilitre milliliter millilitres milliliters'],
  ['l', 'volume', '1000', 'l lt ltr litre liter litres liters'],
  ['fl oz', 'volume', '29.5735295625', 'floz fl.oz'],
  ['gal', 'volume', '3785.411784', 'gal gallon gallons'],
]) {
  for (const spelling of [symbol, ...spellings.split(' ')]) UNITS[spelling] = { symbol, dimension, base };
}
for (const spelling of ['fl. oz.', 'fluid ounce', 'fluid ounces']) UNITS[spelling] = UNITS['fl oz'];

/** Exact unit conversion (1 lb = 0.45359237 kg), as decimal text: convert('2', 'lbs', 'kg') is '0.90718474'. */
export function convert(value, fromUnit, toUnit) {
  const from = UNITS[String(fromUnit).trim().toLowerCase()];
  const to = UNITS[String(toUnit).trim().toLowerCase()];
  if (!from) throw new RangeError(`unknown unit '${fromUnit}'`);
  if (!to) throw new RangeError(`unknown unit '${toUnit}'`);
  if (from.dimension !== to.dimension) {
    throw new RangeError(`cannot convert ${from.dimension} (${fromUnit}) to ${to.dimension} (${toUnit})`);
  }
  const [v, vs] = decimal(value);
  const [f, fs] = decimal(from.base);
  const [t, ts] = decimal(to.base);
  const places = 20;
  // v·10^-vs · f·10^-fs / (t·10^-ts), to `places` decimals.
  const shift = places - vs - fs + ts;
  const numerator = v * f * 10n ** BigInt(Math.max(shift, 0));
  const denominator = t * 10n ** BigInt(Math.max(-shift, 0));
  let text = decimalText(divideRounded(numerator, denominator), places);
  text = text.replace(/\.?0+$/, '');
  return text === '-0' ? '0' : text;
}

const MINOR = { BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3, CLF: 4, UYW: 4 };
for (const code of 'BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF'.split(' ')) MINOR[code] = 0;

/** An exact amount rounded half away from zero to the currency's minor units: money('9.995', 'USD'). */
export function money(amount, currency) {
  const code = String(currency).toUpperCase();
  const places = MINOR[code] ?? 2;
  const [digits, scale] = decimal(amount);
  const rounded =
    scale <= places ? digits * 10n ** BigInt(places - scale) : divideRounded(digits, 10n ** BigInt(scale - places));
  return { amount: decimalText(rounded, places), currency: code };
}

// --- The contract ---------------------------------------------------------------------

// No prototype: a kind named `constructor` or `__proto__` is just a kind.
const handlers = Object.create(null);
let config = {};

/** Registers the function for `product` events: fn(product, event, config). */
export function product(fn) {
  handlers.product = fn;
}

/** Registers the function for `inventory` events: fn(update, event, config). */
export function inventory(fn) {
  handlers.inventory = fn;
}

/** Registers a function for events of any other kind: event('price', fn). */
export function event(kind, fn) {
  handlers[kind] = fn;
}

function one(input) {
  const kind = input.kind.tag === 'other' ? input.kind.val : input.kind.tag;
  const handler = handlers[kind];
  if (!handler) return { tag: 'emit', val: [input] };
  let payload;
  try {
    payload = parse(input.payload);
  } catch (err) {
    return reject('$', 'invalid-json', `the payload is not JSON: ${err.message}`);
  }
  const result = handler(payload, input, config);
  if (result === undefined || result === null) return { tag: 'emit', val: [input] };
  if (result instanceof Violations) return result.length ? { tag: 'reject', val: [...result] } : { tag: 'emit', val: [input] };
  return result;
}

/** The component's `init` export: re-export it from your module. */
export function init(text) {
  try {
    config = parse(text);
  } catch (err) {
    throw `the config is not JSON: ${err.message}`;
  }
}

/** The component's `apply` export: re-export it from your module. */
export function apply(batch) {
  return batch.map(one);
}

/** The contract's `step` export (0.2): `sluice build` exports it for you. */
export const step = { init, apply };
