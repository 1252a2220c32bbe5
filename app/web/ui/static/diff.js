// A line diff of two texts (longest common subsequence): flag definitions are small, so the
// quadratic table is cheap; past MAX_CELLS lines it falls back to "all removed, all added".

const MAX_CELLS = 4_000_000;

/** [[" " | "-" | "+", line], ...] turning `before` into `after`. */
export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  if (a.length * b.length > MAX_CELLS) {
    return [...a.map((line) => ["-", line]), ...b.map((line) => ["+", line])];
  }
  const width = b.length + 1;
  const common = new Uint32Array((a.length + 1) * width);
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      common[i * width + j] =
        a[i] === b[j]
          ? common[(i + 1) * width + j + 1] + 1
          : Math.max(common[(i + 1) * width + j], common[i * width + j + 1]);
    }
  }
  const lines = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      lines.push([" ", a[i]]);
      i++;
      j++;
    } else if (common[(i + 1) * width + j] >= common[i * width + j + 1]) {
      lines.push(["-", a[i++]]);
    } else {
      lines.push(["+", b[j++]]);
    }
  }
  while (i < a.length) lines.push(["-", a[i++]]);
  while (j < b.length) lines.push(["+", b[j++]]);
  return lines;
}

/** JSON as the dashboard shows it: two-space indents, keys in their stored order. */
export const pretty = (value) => JSON.stringify(value, null, 2);
