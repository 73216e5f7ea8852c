// Unit tests of web/lib/quantspec.js (quantization spec texts as quant/spec.py parses them), run by `node --test`.
import assert from "node:assert/strict";
import { test } from "node:test";
import { readFileSync } from "node:fs";
import { parseSpec, quantizerWarning, sameSpec, smoothingOf, SMOOTHING_NAME, specName } from "../../web/lib/quantspec.js";

// The cases quant/spec.py is checked against too (tests/test_quant_spec_vectors.py).
const VECTORS = JSON.parse(readFileSync(new URL("../quant_spec_vectors.json", import.meta.url), "utf8")).cases;

for (const c of VECTORS) {
  test(`quantization spec as the loader reads it: ${c.why} (${JSON.stringify(c.text)})`, () => {
    if ("error" in c) {
      assert.throws(() => parseSpec(c.text), (e) => {
        assert.equal(e.message, c.error);
        return true;
      });
    } else {
      const { name, w_bits, a_bits, group_size, act_granularity, act_group_size, rank } = parseSpec(c.text);
      assert.deepEqual({ name, w_bits, a_bits, group_size, act_granularity, act_group_size, rank },
                       { name: c.name, w_bits: c.w_bits, a_bits: c.a_bits, group_size: c.group_size,
                         act_granularity: c.act_granularity, act_group_size: c.act_group_size ?? null, rank: c.rank });
      assert.equal(parseSpec(name).name, name, "the name parses back to itself");
    }
  });
}

test("specName prints the rank last and -tensor only with quantized activations", () => {
  assert.equal(specName({ w_bits: 4, a_bits: 8, group_size: 64, act_granularity: "tensor", rank: 32 }),
               "W4A8-g64-tensor-r32");
  assert.equal(specName({ w_bits: 4, a_bits: 16, group_size: null, act_granularity: "tensor", rank: null }), "W4A16");
});

test("sameSpec compares canonical names", () => {
  assert.ok(sameSpec("w4a8_r32_g64", "W4A8-g64-r32"));
  assert.ok(!sameSpec("W4A8-g64", "W4A8-g64-r32"));
  assert.ok(!sameSpec("fp8", "W8A8"));
});

test("quantizerWarning says what calibration/presets.py quantizer_mismatch says", () => {
  const recorded = { spec: "W4A8-g64-r32", backend: "auto" };
  assert.equal(quantizerWarning("tiny", recorded, { spec: "w4a8_r32_g64", backend: "auto" }), null);
  assert.equal(quantizerWarning("tiny", null, { spec: "W4A8", backend: "auto" }), null);
  assert.equal(quantizerWarning("tiny", recorded, { spec: "W4A4-g64-r32", backend: "auto" }),
               "preset 'tiny' was fitted on W4A8-g64-r32 (auto backend), this model has W4A4-g64-r32 (auto backend): "
               + "its coefficients correct another quantizer's error");
  assert.match(quantizerWarning("tiny", recorded, null), /this model has no Q-Sched quantizer/);
  assert.match(quantizerWarning("tiny", recorded, { spec: "W4A8-g64-r32", backend: "simulate" }), /simulate backend/);
});

test("quantizerWarning compares the rounding as quantizer_mismatch does (absent: nearest)", () => {
  const nearest = { spec: "W4A8", backend: "int8" };
  const calibrated = { spec: "W4A8", backend: "int8", rounding: "GPTQ" };
  assert.equal(quantizerWarning("tiny", calibrated, { ...calibrated }), null);
  assert.equal(quantizerWarning("tiny", nearest, { ...nearest, rounding: undefined }), null);
  assert.equal(quantizerWarning("tiny", calibrated, nearest),
               "preset 'tiny' was fitted on W4A8 (int8 backend, GPTQ rounding), this model has W4A8 (int8 backend): "
               + "its coefficients correct another quantizer's error");
  assert.match(quantizerWarning("tiny", nearest, calibrated), /this model has W4A8 \(int8 backend, GPTQ rounding\)/);
});

test("smoothingOf resolves the calibrated loader's smoothing as quant/smoothing.py resolve does", () => {
  assert.equal(smoothingOf("auto", "W4A4-g16-r8"), SMOOTHING_NAME);
  assert.equal(smoothingOf(undefined, "w4a4_g64"), SMOOTHING_NAME);   // a workflow saved before the widget: auto
  assert.equal(smoothingOf("auto", "W4A8-g64"), undefined);
  assert.equal(smoothingOf("auto", "W4A16"), undefined);
  assert.equal(smoothingOf("on", "W8A8"), SMOOTHING_NAME);
  assert.equal(smoothingOf("off", "W4A4"), undefined);
  assert.equal(smoothingOf("auto", "not a spec"), undefined);
});

test("quantizerWarning compares the smoothing as quantizer_mismatch does (absent: none)", () => {
  const gptq = { spec: "W4A4-g16-r8", backend: "simulate", rounding: "GPTQ" };
  const smoothed = { ...gptq, smoothing: SMOOTHING_NAME };
  assert.equal(quantizerWarning("tiny", smoothed, { ...smoothed }), null);
  assert.equal(quantizerWarning("tiny", gptq, { ...gptq, smoothing: undefined }), null);
  assert.equal(quantizerWarning("tiny", gptq, smoothed),
               "preset 'tiny' was fitted on W4A4-g16-r8 (simulate backend, GPTQ rounding), this model has W4A4-g16-r8 "
               + "(simulate backend, GPTQ rounding, SmoothQuant alpha 0.5 smoothing): its coefficients correct another "
               + "quantizer's error");
});
