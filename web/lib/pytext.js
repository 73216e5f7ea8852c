// Python's text forms (float(), str.strip(), repr()) in JavaScript, so that the panels accept exactly the
// coefficient text the node accepts and show the node's own error message.

// Characters for which Python's str.isspace() is true (what str.strip() removes).
const SPACE = "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const EDGE_SPACE = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, "g");
const DECIMAL_DIGIT = /\p{Nd}/u;
const DIGITS = "[0-9](?:_?[0-9])*";
// float()'s grammar once its Unicode digits are mapped to ASCII (Python docs, "floatvalue").
const NUMBER = `(?:(?:${DIGITS})?\\.${DIGITS}|${DIGITS}\\.?)(?:e[+-]?${DIGITS})?`;
const FLOAT_TEXT = new RegExp(`^[+-]?(?:${NUMBER}|inf|infinity|nan)$`, "i");
const NOT_PRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

export function pyStrip(text) {
  return text.replace(EDGE_SPACE, "");
}

// Unicode assigns each set of decimal digits one contiguous run 0..9, so a digit's value is its distance
// from the start of its block of digits, modulo 10 (blocks of several sets stay aligned to 10).
function asciiDigit(char) {
  let start = char.codePointAt(0);
  while (DECIMAL_DIGIT.test(String.fromCodePoint(start - 1))) start -= 1;
  return String((char.codePointAt(0) - start) % 10);
}

// float(text) for text without surrounding space, or null where Python raises ValueError.
export function pyFloat(text) {
  const ascii = [...text].map((c) => (c >= "0" && c <= "9") || !DECIMAL_DIGIT.test(c) ? c : asciiDigit(c)).join("");
  if (!FLOAT_TEXT.test(ascii)) return null;
  const lower = ascii.toLowerCase();
  if (lower.endsWith("nan")) return NaN;
  if (lower.endsWith("inf") || lower.endsWith("infinity")) return lower.startsWith("-") ? -Infinity : Infinity;
  return Number(ascii.replaceAll("_", ""));
}

// repr(float): the shortest digits that round-trip (as JavaScript's), written in exponent form when the
// exponent is below -4 or at least 16.
export function pyFloatRepr(value) {
  if (Number.isNaN(value)) return "nan";
  if (!Number.isFinite(value)) return value > 0 ? "inf" : "-inf";
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa, exponent] = value.toExponential().split("e");
  const e = Number(exponent);
  if (e < -4 || e >= 16) return `${mantissa}e${e < 0 ? "-" : "+"}${String(Math.abs(e)).padStart(2, "0")}`;
  const fixed = String(value);
  return fixed.includes(".") ? fixed : `${fixed}.0`;
}

const ESCAPES = { "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" };

// repr(str): single quotes unless the text has a single quote and no double quote; escapes as Python's.
export function pyStrRepr(text) {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = "";
  for (const char of text) {
    const code = char.codePointAt(0);
    if (char === quote) out += `\\${quote}`;
    else if (ESCAPES[char]) out += ESCAPES[char];
    else if (code < 0x20 || code === 0x7f || (code > 0x7f && NOT_PRINTABLE.test(char))) {
      const [prefix, width] = code <= 0xff ? ["x", 2] : code <= 0xffff ? ["u", 4] : ["U", 8];
      out += `\\${prefix}${code.toString(16).padStart(width, "0")}`;
    } else out += char;
  }
  return quote + out + quote;
}
