/**
 * A seeded pseudo-random source, so a run draws the same numbers every time: statistical and fuzz
 * tests are never flaky, and a soak or linearizability run that found something can be repeated
 * with the same choices (`--seed`). Not for anything that needs unpredictability.
 *
 * @module
 */

/** Uniform draws in [0, 1), an integer in [0, n), and a number in [min, max), all from one seed. */
export interface Random {
  readonly seed: number;
  next(): number;
  int(n: number): number;
  between(min: number, max: number): number;
}

/**
 * A mulberry32 generator seeded with `seed` (a 32-bit integer).
 *
 * @example const rng = seededRandom(42); rng.int(3) // 0, 1 or 2, the same every run
 * @example createPolicy("random", table, seededRandom(7).next) // `next` stands alone as a () => number
 */
export function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    seed,
    next,
    int: (n) => Math.floor(next() * n),
    between: (min, max) => min + next() * (max - min),
  };
}
