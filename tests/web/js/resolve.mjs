// Resolve flags through @openfeature/server-sdk with the official OFREP provider.
// argv[2]: the provider module ('@openfeature/ofrep-provider' from npm, or a path to a build).
// stdin: {"baseUrl", "sdkKey", "evaluations": [{"flag", "type", "default", "context"}]}
// stdout: one JSON array, per evaluation {value, variant, reason, errorCode, errorMessage}.
import { OpenFeature } from '@openfeature/server-sdk';

const METHODS = {
  boolean: 'getBooleanDetails',
  string: 'getStringDetails',
  number: 'getNumberDetails',
  object: 'getObjectDetails',
};

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const { OFREPProvider } = await import(process.argv[2]);
const input = await readStdin();
const provider = new OFREPProvider({
  baseUrl: input.baseUrl,
  headers: [['Authorization', `Bearer ${input.sdkKey}`]],
});
await OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();
const results = [];
for (const { flag, type, default: fallback, context } of input.evaluations) {
  const details = await client[METHODS[type]](flag, fallback, context ?? {});
  results.push({
    value: details.value,
    variant: details.variant ?? null,
    reason: details.reason ?? null,
    errorCode: details.errorCode ?? null,
    errorMessage: details.errorMessage ?? null,
  });
}
await OpenFeature.close();
process.stdout.write(JSON.stringify(results));
