/**
 * Timers for any delay a flag accepts. `setTimeout` keeps delays in a signed 32-bit integer: a
 * delay over 2^31-1 ms (about 24.8 days) fires after 1 ms instead (and Node-style runtimes print an
 * overflow warning). `after` chains such waits, so `--retry-delay=1000h` waits 1000 hours.
 *
 * @module
 */

/** The longest delay a single setTimeout honours. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Runs `fn` once after `ms` milliseconds, however long; returns a function that cancels it.
 *
 * @param unref when true the wait does not keep the process alive. @default false
 * @example const cancel = after(1000 * 3600 * 1000, probe); // 1000 hours
 */
export function after(ms: number, fn: () => void, unref = false): () => void {
  let timer: Timer | undefined;
  let cancelled = false;
  const wait = (left: number) => {
    const step = Math.min(Math.max(left, 0), MAX_TIMER_MS);
    timer = setTimeout(() => {
      if (cancelled) return;
      if (left > MAX_TIMER_MS) wait(left - MAX_TIMER_MS);
      else fn();
    }, step);
    if (unref) timer.unref();
  };
  wait(ms);
  return () => {
    cancelled = true;
    clearTimeout(timer);
  };
}

/** Resolves after `ms` milliseconds, however long. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => after(ms, resolve));
}
