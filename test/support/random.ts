/** A seeded PRNG for statistical and fuzz tests: every run draws the same numbers, so they are never flaky. */
import { seededRandom } from "../../scripts/lib/random.ts";

export function seeded(seed: number): () => number {
  const r = seededRandom(seed);
  return () => r.next();
}
