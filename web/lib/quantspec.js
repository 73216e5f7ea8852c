// Quantization specs as quant/spec.py parses them (QuantSpec.parse / .name), with the same grammar and the same
// error messages: "W4A8", "W8A8-g64", "W4A8-tensor", "W4A16", "W4A4-g64-r32", "W4A4-g64-ag64".
// tests/quant_spec_vectors.json holds cases both sides are checked against.
import { pyStrip, pyStrRepr } from "./pytext.js";

const SPEC = /^W([0-9]{1,4})A([0-9]{1,4})((?:-[A-Z0-9]+)*)$/;
const WEIGHT_BITS = [2, 3, 4, 5, 6, 7, 8];
const ACTIVATION_BITS = [...WEIGHT_BITS, 16];

class QuantSpecError extends Error {}

const repr = (value) => pyStrRepr(String(value));

function check(spec) {
  if (!WEIGHT_BITS.includes(spec.w_bits)) throw new QuantSpecError(`weight bits must be 2..8, got ${spec.w_bits}`);
  if (!ACTIVATION_BITS.includes(spec.a_bits)) {
    throw new QuantSpecError(`activation bits must be 2..8 or 16 (unquantized), got ${spec.a_bits}`);
  }
  if (spec.group_size !== null && (spec.group_size < 2 || spec.group_size % 2)) {
    throw new QuantSpecError(`group size must be an even number >= 2, got ${spec.group_size}`);
  }
  if (spec.act_group_size !== null && spec.act_group_size < 2) {
    throw new QuantSpecError(`activation group size must be >= 2, got ${spec.act_group_size}`);
  }
  if (spec.rank !== null && (spec.rank < 1 || spec.rank > 1024)) {
    throw new QuantSpecError(`low-rank branch rank must be 1..1024, got ${spec.rank}`);
  }
}

// The canonical name: W<w>A<a>[-g<N>][-tensor|-ag<N>][-r<N>] (-tensor and -ag<N> only where activations are
// quantized).
export function specName(spec) {
  let text = `W${spec.w_bits}A${spec.a_bits}`;
  if (spec.group_size) text += `-g${spec.group_size}`;
  if (spec.act_granularity === "tensor" && spec.a_bits < 16) text += "-tensor";
  if (spec.act_granularity === "group" && spec.a_bits < 16) text += `-ag${spec.act_group_size}`;
  if (spec.rank) text += `-r${spec.rank}`;
  return text;
}

// QuantSpec.parse: {w_bits, a_bits, group_size, act_granularity, act_group_size, rank, name}, or an Error with the
// Python message.
export function parseSpec(text) {
  const source = String(text);
  const match = SPEC.exec(pyStrip(source).toUpperCase().replaceAll("_", "-"));
  if (!match) {
    throw new QuantSpecError(`cannot parse quantization spec ${repr(source)}; expected e.g. 'W8A8', 'W4A8-g128', `
                             + "'W4A8-tensor', 'W4A4-g64-r32'");
  }
  const spec = { w_bits: Number(match[1]), a_bits: Number(match[2]), group_size: null, act_granularity: "token",
                 act_group_size: null, rank: null };
  const given = new Map(); // option kind -> its text: a second one of a kind is refused, not last-wins
  for (const option of match[3].split("-").filter(Boolean)) {
    let kind;
    if (/^G[0-9]{1,9}$/.test(option)) {
      kind = "weight group size";
      spec.group_size = Number(option.slice(1));
    } else if (/^R[0-9]{1,9}$/.test(option)) {
      kind = "low-rank branch rank";
      spec.rank = Number(option.slice(1));
    } else if (option === "TENSOR" || option === "TOKEN") {
      kind = "activation granularity";
      spec.act_granularity = option.toLowerCase();
    } else if (/^AG[0-9]{1,9}$/.test(option)) {
      kind = "activation granularity";
      spec.act_granularity = "group";
      spec.act_group_size = Number(option.slice(2));
    } else {
      throw new QuantSpecError(`unknown option ${repr(option)} in quantization spec ${repr(source)}`);
    }
    if (given.has(kind)) {
      throw new QuantSpecError(`quantization spec ${repr(source)} gives the ${kind} twice (${repr(given.get(kind))} `
                               + `and ${repr(option)}); give it once`);
    }
    given.set(kind, option);
  }
  if (spec.a_bits >= 16 && given.has("activation granularity")) {
    throw new QuantSpecError(`quantization spec ${repr(source)} is weight-only (A16): it has no activation `
                             + `quantization for ${repr(given.get("activation granularity"))} to apply to`);
  }
  check(spec);
  return { ...spec, name: specName(spec) };
}

// The same quantizer? Spec texts compared by their canonical names (w4a8_g64 is W4A8-g64); unparsable texts by
// their text.
function canonical(text) {
  try { return parseSpec(text).name; } catch { return String(text); }
}

export function sameSpec(a, b) {
  return canonical(a) === canonical(b);
}

const describe = (q) => (q ? `${q.spec} (${q.backend} backend${q.rounding ? `, ${q.rounding} rounding` : ""}`
  + `${q.smoothing ? `, ${q.smoothing} smoothing` : ""})` : "no Q-Sched quantizer");

// quant/smoothing.py: NAME, and resolve(mode, spec) for the calibrated loader's `smoothing` widget ("auto": on for
// quantized activations of 4 bits or fewer). The smoothing a load of `specText` records, undefined for none.
export const SMOOTHING_NAME = "SmoothQuant alpha 0.5";
export function smoothingOf(mode, specText) {
  let aBits = null;
  try { aBits = parseSpec(specText).a_bits; } catch { /* an unparsable spec loads nothing */ }
  const on = mode === "on" || ((mode ?? "auto") === "auto" && aBits !== null && aBits <= 4);
  return on ? SMOOTHING_NAME : undefined;
}

// calibration/presets.py quantizer_mismatch: the warning when a preset fitted on `recorded` ({spec, backend[,
// rounding[, smoothing]]}) goes to a model built with `model`'s quantizer (null: a model the quantized loaders did
// not make); null when they agree or the preset records none. No rounding: round-to-nearest; no smoothing: none.
export function quantizerWarning(presetModel, recorded, model) {
  if (!recorded) return null;
  if (model && sameSpec(model.spec, recorded.spec) && model.backend === recorded.backend
      && (model.rounding ?? null) === (recorded.rounding ?? null)
      && (model.smoothing ?? null) === (recorded.smoothing ?? null)) return null;
  const modelQuantizer = model && { spec: canonical(model.spec), backend: model.backend, rounding: model.rounding,
                                    smoothing: model.smoothing };
  return `preset ${pyStrRepr(String(presetModel))} was fitted on ${describe(recorded)}, this model has `
    + `${describe(modelQuantizer)}: its coefficients correct another quantizer's error`;
}
