// Drives a running Rosetta server with the `openai` npm package and the Vercel AI SDK, as
// agents written in TypeScript do: tool calls, streamed tool calls, the Responses API's
// streaming events, `generateObject` with a zod schema and `generateText` with a tool loop;
// and, given an embedding model, `embeddings.create` in the package's default base64.
//
// Usage: node agents.mjs BASE_URL MODEL [EMBEDDING_MODEL]
//
// The model has random weights: every check relies only on what constrained decoding
// guarantees (valid JSON, valid arguments) and on the shapes the clients parse.
// Exits 0 when every check passes; otherwise prints each failure and exits 1.

import OpenAI from "openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateObject, generateText, stepCountIs, tool } from "ai";
import { z } from "zod";

const [baseUrl, modelId, embeddingModelId] = process.argv.slice(2);
const failures = [];

async function check(name, fn) {
  try {
    await fn();
    console.log(`ok    ${name}`);
  } catch (e) {
    failures.push(name);
    console.log(`FAIL  ${name}\n${e?.stack ?? e}`);
  }
}

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

// Bounded fields: whatever the random weights pick, the JSON ends well within the limit.
const weatherParameters = {
  type: "object",
  properties: {
    city: { type: "string", maxLength: 10 },
    unit: { enum: ["celsius", "fahrenheit"] },
  },
  required: ["city", "unit"],
  additionalProperties: false,
};
const weatherSchema = z.object({
  city: z.string().max(10),
  unit: z.enum(["celsius", "fahrenheit"]),
});

const client = new OpenAI({ baseURL: `${baseUrl}/v1`, apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Hali ya hewa Nairobi ni gani?" }];
const tools = [
  { type: "function", function: { name: "get_weather", parameters: weatherParameters, strict: true } },
];

await check("openai: required tool call", async () => {
  const r = await client.chat.completions.create({
    model: modelId, messages, tools, tool_choice: "required",
    parallel_tool_calls: false, max_tokens: 100, seed: 3,
  });
  const choice = r.choices[0];
  assert(choice.finish_reason === "tool_calls", JSON.stringify(choice));
  const call = choice.message.tool_calls[0];
  assert(call.type === "function" && call.id.startsWith("call_"), JSON.stringify(call));
  weatherSchema.parse(JSON.parse(call.function.arguments));
});

await check("openai: streamed tool call (runTools-style accumulation)", async () => {
  const stream = client.chat.completions.stream({
    model: modelId, messages, tools, tool_choice: "required",
    parallel_tool_calls: false, max_tokens: 100, seed: 5,
  });
  let deltas = 0;
  stream.on("chunk", (chunk) => {
    for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) {
      assert(typeof d.index === "number", `index on every delta: ${JSON.stringify(d)}`);
      deltas += 1;
    }
  });
  const final = await stream.finalChatCompletion();
  assert(deltas > 0, "tool-call deltas");
  const call = final.choices[0].message.tool_calls[0];
  weatherSchema.parse(JSON.parse(call.function.arguments));
});

await check("openai: responses stream events", async () => {
  const stream = await client.responses.create({
    model: modelId, input: "Jambo!", max_output_tokens: 5, stream: true,
  });
  const types = [];
  let text = "";
  let final;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.incomplete" || event.type === "response.completed") final = event.response;
  }
  assert(types[0] === "response.created", types.join(","));
  assert(types.includes("response.output_text.delta"), types.join(","));
  assert(final.output[0].content[0].text === text, JSON.stringify(final.output));
});

const provider = createOpenAICompatible({
  name: "rosetta", baseURL: `${baseUrl}/v1`, apiKey: "unused", supportsStructuredOutputs: true,
});
const model = provider.chatModel(modelId);

await check("ai sdk: generateObject with a zod schema", async () => {
  const schema = z.object({
    language: z.enum(["sw", "yo", "ha", "am"]),
    words: z.number().int().min(0).max(50),
    formal: z.boolean(),
  });
  const { object, finishReason } = await generateObject({
    model, schema, prompt: "Tafsiri.", maxOutputTokens: 100, maxRetries: 0,
  });
  assert(finishReason === "stop", finishReason);
  schema.parse(object);
});

await check("ai sdk: generateText with a tool loop", async () => {
  let executed = 0;
  const result = await generateText({
    model,
    prompt: "Hali ya hewa Nairobi ni gani?",
    tools: {
      getWeather: tool({
        description: "Current weather in a city",
        inputSchema: weatherSchema,
        execute: async ({ city }) => {
          executed += 1;
          return { city, temperature: 21 };
        },
      }),
    },
    toolChoice: "required",
    stopWhen: stepCountIs(2),
    maxOutputTokens: 100,
    seed: 1,
    maxRetries: 0,
    // Extra body fields: one call per turn, so that each step's call list closes.
    providerOptions: { rosetta: { parallel_tool_calls: false } },
  });
  assert(executed >= 1, "the tool ran");
  assert(result.steps.length === 2, `two steps, got ${result.steps.length}`);
  const first = result.steps[0];
  assert(first.finishReason === "tool-calls", first.finishReason);
  weatherSchema.parse(first.toolCalls[0].input);
  assert(first.toolResults[0].output.temperature === 21, JSON.stringify(first.toolResults));
});

// The npm package asks for base64 by default and decodes it into floats.
if (embeddingModelId) {
  await check("openai: embeddings (default base64, and float)", async () => {
    const input = ["Habari za asubuhi", "Good morning"];
    const b64 = await client.embeddings.create({ model: embeddingModelId, input });
    const floats = await client.embeddings.create({
      model: embeddingModelId,
      input,
      encoding_format: "float",
    });
    assert(b64.data.length === 2, JSON.stringify(b64.usage));
    for (const [i, d] of b64.data.entries()) {
      assert(Array.isArray(d.embedding) && d.embedding.length === 64, `length ${d.embedding.length}`);
      const norm = Math.sqrt(d.embedding.reduce((s, x) => s + x * x, 0));
      assert(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
      // JSON carries each f32 in its shortest decimal form: the same f32 once narrowed.
      const narrowed = Array.from(new Float32Array(floats.data[i].embedding));
      assert(d.embedding.every((x, j) => x === narrowed[j]), "base64 and float disagree");
    }
  });
}

if (failures.length) {
  console.log(`${failures.length} failed: ${failures.join(", ")}`);
  process.exit(1);
}
