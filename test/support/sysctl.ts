/**
 * `net.ipv4.tcp_migrate_req` for the tests and the restart benchmark (docs/restarts.md): set for a
 * while, then put back as it was. 0 is the kernel's default (a closed listening socket resets
 * the connects queued in it); 1 hands them to another socket of the same SO_REUSEPORT group.
 *
 * @module
 */
import { afterAll, beforeAll } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";

const KNOB = "/proc/sys/net/ipv4/tcp_migrate_req";

/** Sets tcp_migrate_req to `value`; returns what puts the previous value back. */
export function setMigrateReq(value: "0" | "1"): () => void {
  const saved = readFileSync(KNOB, "utf8").trim();
  writeFileSync(KNOB, value);
  return () => writeFileSync(KNOB, saved);
}

/** Registers hooks that hold tcp_migrate_req at `value` for the suite (or describe block) they are called in. */
export function useMigrateReq(value: "0" | "1"): void {
  let restore: (() => void) | undefined;
  beforeAll(() => {
    restore = setMigrateReq(value);
  });
  afterAll(() => restore?.());
}
