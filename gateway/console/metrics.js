// Reading ragway's Prometheus metrics: samples, their increase over a window, quantiles of a
// histogram.


/** Prometheus text: `[{name, labels, value}]`. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const [, k, v] of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v.replace(/\\(.)/g, "$1");
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

const history = [];
const WINDOW_S = 300;

/**
 * Keeps a scrape; returns the oldest kept within the window (to subtract from now) and what the
 * difference covers. The first scrape has nothing before it: its counts are since the start.
 */
export function remember(samples) {
  const now = Date.now() / 1000;
  history.push({ at: now, samples });
  while (history.length > 2 && history[0].at < now - WINDOW_S) history.shift();
  const then = history[0];
  const covers = history.length === 1 ? "since the server started"
    : `over the last ${Math.round(now - then.at)} s this console has watched (up to 5 minutes)`;
  return { samples: then.samples, covers };
}

/** Sum of `name`'s samples by the label `by`, now minus then (counter increases in the window). */
export function increase(now, then, name, by, where = () => true) {
  const total = (samples) => {
    const sums = {};
    for (const s of samples) if (s.name === name && where(s.labels)) sums[by(s.labels)] = (sums[by(s.labels)] || 0) + s.value;
    return sums;
  };
  const a = total(now);
  const b = then === now ? {} : total(then);
  return Object.fromEntries(Object.entries(a).map(([k, v]) => [k, Math.max(0, v - (b[k] || 0))]));
}

/** The q-quantile of a histogram's bucket counts (`{le: count}`), as Prometheus interpolates it. */
export function quantile(q, buckets) {
  const bounds = Object.entries(buckets).map(([le, c]) => [le === "+Inf" ? Infinity : Number(le), c]).sort((a, b) => a[0] - b[0]);
  const total = bounds.length ? bounds[bounds.length - 1][1] : 0;
  if (!total) return NaN;
  const rank = q * total;
  let [prevBound, prevCount] = [0, 0];
  for (const [bound, count] of bounds) {
    if (count >= rank) {
      if (bound === Infinity) return prevBound;
      return prevBound + ((bound - prevBound) * (rank - prevCount)) / Math.max(count - prevCount, 1e-9);
    }
    [prevBound, prevCount] = [bound, count];
  }
  return prevBound;
}
